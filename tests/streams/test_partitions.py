"""The events partitions a worker owns (streams/partitions.py): state is loaded once per partition,
for every assigned partition still without one at once, and dropped on revocation."""

from __future__ import annotations

import asyncio

from streams.partitions import Partitions, PartitionState
from tests.streams.fakes import message
from tests.streams.states import fresh


class Loads:
    """A loader that makes fresh state and keeps the partitions of each call."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    async def __call__(self, partitions: list[int]) -> dict[int, PartitionState]:
        self.calls.append(partitions)
        await asyncio.sleep(0.01)  # reading checkpoints takes a while: other records arrive
        return {p: fresh() for p in partitions}


def test_the_first_record_loads_every_assigned_partition_without_state_in_one_read() -> None:
    async def scenario() -> None:
        loads = Loads()
        partitions = Partitions(loads, assigned=lambda: {0, 2, 4})
        first, second, again = await asyncio.gather(
            partitions.state_of(2), partitions.state_of(4), partitions.state_of(2)
        )
        assert loads.calls == [[0, 2, 4]]
        assert first is again and first is not second
        await partitions.state_of(5)  # assigned since: only it is loaded
        assert loads.calls == [[0, 2, 4], [5]]
        assert [p for p, _ in partitions.items()] == [0, 2, 4, 5]

    asyncio.run(scenario())


def test_a_revoked_partition_is_forgotten_and_loaded_again_when_it_comes_back() -> None:
    async def scenario() -> None:
        loads = Loads()
        partitions = Partitions(loads, assigned=lambda: {1})
        state = await partitions.state_of(1)
        assert partitions.owns(1, state)
        partitions.forget(1)
        assert not partitions.owns(1, state) and partitions.next_offsets() == {}
        assert await partitions.state_of(1) is not state
        assert loads.calls == [[1], [1]]

    asyncio.run(scenario())


def test_a_record_passed_moves_the_next_offset_and_waits_for_the_next_checkpoint_without_its_bytes() -> None:
    state = fresh()
    passed = message(3, 41, b"{}")
    state.passed(passed)
    assert state.next_offset == 42 and state.unacked == [passed] and passed.value is None
