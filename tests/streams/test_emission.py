"""The timer's work and the emission of closed windows (streams/emission.py), without Kafka:
windows the watermark closed go out once, one emission at a time, and a checkpoint follows the
acks of the windows emitted before it."""

from __future__ import annotations

import asyncio

import orjson

from schemas.rules import RuleFile
from streams.alerts import AlertEngine
from streams.checkpoint import decode
from streams.checkpointing import Checkpointer
from streams.emission import Emission
from streams.partitions import EventsMessage, Partitions, PartitionState
from streams.publishing import AlertPublisher, LatePublisher, WindowPublisher
from tests.streams.fakes import QUICK, FakeBatchProducer, FakeSender
from tests.streams.states import NOW, at, feature, fold, fresh, offsets, record


class Worker:
    """An Emission over the given partition states, on a FakeBatchProducer (windows) and a
    FakeSender (alerts, checkpoints, late records); partitions are checkpointed at every tick."""

    def __init__(self, *states: PartitionState, clock: float = NOW) -> None:
        self.states = dict(enumerate(states))
        self.producer = FakeBatchProducer()
        self.sender = FakeSender()
        self.acked: list[EventsMessage] = []
        self.partitions = Partitions(self._load, assigned=lambda: self.states)
        checkpointer = Checkpointer(
            self.sender, "checkpoints", "events", LatePublisher(self.sender, "late"), self.acked.append, 0.0
        )
        self.emission = Emission(
            self.partitions,
            WindowPublisher(self.producer, "aggregates", QUICK),
            AlertPublisher(self.sender, "alerts", QUICK),
            checkpointer,
            clock=lambda: clock,
        )

    async def _load(self, partitions: list[int]) -> dict[int, PartitionState]:
        return {p: self.states[p] for p in partitions}

    async def own(self) -> None:
        await self.partitions.state_of(0)

    def windows(self) -> list[tuple[str, str]]:
        """(granularity, window start) of every window Kafka acknowledged, in order."""
        found = []
        for batch in self.producer.acknowledged:
            for _, value in batch:
                window = orjson.loads(value)
                found.append((window["granularity"], window["window_start"]))
        return found

    def checkpoints(self) -> list[int]:
        """The next offset of every checkpoint Kafka acknowledged."""
        return [decode(r.value).next_offset for r in self.sender.on("checkpoints")]


def ten_seconds(start: float) -> tuple[str, str]:
    """The 10-second window starting `start` seconds after T0, as `Worker.windows` names it."""
    return "10s", at(start)[:19] + "Z"


def closing(*seconds: float) -> PartitionState:
    """A partition with one event at each of `seconds` (after T0), folded at offsets 0, 1, ..."""
    state = fresh()
    for offset, second in enumerate(seconds):
        fold(state, offset, record(feature(offset, second)))
    return state


def settle() -> asyncio.Future[None]:
    """A few turns of the event loop: tasks run as far as they can without Kafka."""
    return asyncio.ensure_future(asyncio.sleep(0.01))


def test_a_tick_emits_the_windows_the_watermark_closed_once_then_checkpoints_what_it_folded() -> None:
    async def scenario() -> None:
        worker = Worker(closing(0, 15))  # the watermark at 15 s has closed the pane of 0-10 s
        await worker.own()
        await worker.emission.tick()
        assert worker.windows() == [ten_seconds(0)]
        assert worker.checkpoints() == [2] and offsets(worker.acked) == [0, 1]

        await worker.emission.tick()  # nothing closed, nothing folded since
        assert len(worker.windows()) == 1 and worker.checkpoints() == [2]

    asyncio.run(scenario())


def test_a_record_that_closes_a_window_wakes_an_emission_without_waiting_for_the_tick() -> None:
    async def scenario() -> None:
        worker = Worker(closing(0, 15))
        await worker.own()
        emitting = asyncio.create_task(worker.emission.emit_when_woken())
        await settle()
        assert worker.producer.produced == []
        worker.emission.wake()
        await emitting
        assert len(worker.windows()) == 1
        assert worker.checkpoints() == []  # the tick's work

    asyncio.run(scenario())


def test_emission_never_runs_twice_at_once_and_a_checkpoint_waits_for_the_windows_acks() -> None:
    async def scenario() -> None:
        state = closing(0, 15)
        worker = Worker(state)
        await worker.own()
        worker.producer.holding = True
        worker.emission.wake()
        woken = asyncio.create_task(worker.emission.emit_when_woken())
        await settle()
        assert len(worker.producer.produced) == 1  # the window of 0-10 s, not acknowledged yet

        fold(state, 2, record(feature(2, 25)))  # closes the pane of 10-20 s
        ticking = asyncio.create_task(worker.emission.tick())
        await settle()
        assert len(worker.producer.produced) == 1  # the tick waits for the emission under way
        assert worker.checkpoints() == [] and worker.sender.held == []

        worker.producer.release()
        await asyncio.gather(woken, ticking)
        assert worker.windows() == [ten_seconds(0), ten_seconds(10)]
        assert worker.checkpoints() == [3]

    asyncio.run(scenario())


def test_a_partition_revoked_while_its_windows_go_out_is_left_to_its_new_owner() -> None:
    async def scenario() -> None:
        worker = Worker(closing(0, 15))
        await worker.own()
        worker.producer.holding = True
        ticking = asyncio.create_task(worker.emission.tick())
        await settle()
        worker.partitions.forget(0)  # a rebalance while the tick waits for Kafka
        worker.producer.release()
        await ticking
        assert len(worker.windows()) == 1  # out of the state already: sent whatever happens
        assert worker.checkpoints() == [] and worker.acked == []

    asyncio.run(scenario())


def test_alerts_of_a_quiet_partition_change_on_the_tick_with_the_wall_clock() -> None:
    rules = RuleFile.model_validate(
        {
            "rules": [
                {
                    "name": "quiet",
                    "window": "1m",
                    "op": ">=",
                    "threshold": 3,
                    "match": {"type": "feature", "feature": "f"},
                    "annotations": {"summary": "{value}"},
                }
            ]
        }
    )

    async def scenario() -> None:
        state = fresh()
        state.alerts = AlertEngine(rules, idle_s=5)
        for offset in range(3):
            fold(state, offset, record(feature(offset, 1 + offset)))  # fires (published by the agent)
        worker = Worker(state, clock=NOW + 70)  # idle since: its clock is at 73 s
        await worker.own()
        await worker.emission.tick()
        [resolved] = [orjson.loads(r.value) for r in worker.sender.on("alerts")]
        assert (resolved["rule"], resolved["state"]) == ("quiet", "resolved")

    asyncio.run(scenario())
