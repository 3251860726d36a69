"""Checkpoints of partition state, written and restored without Kafka (streams/checkpointing.py):
a checkpoint holds exactly the records folded before it was taken, acknowledges only those once
Kafka has it, and a partition restored from it folds the records after it as if no worker had
stopped."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import orjson
import pytest
from aiokafka.errors import KafkaError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plumbing.backoff import Backoff
from streams.checkpoint import Checkpoint, SourceUnavailable, decode, encode
from streams.checkpointing import Checkpointer, Restorer
from streams.partitions import EventsMessage, PartitionState
from streams.publishing import LatePublisher
from tests.streams.fakes import FakeCheckpoints, FakeSender
from tests.streams.states import RULES, T0, close, feature, fold, fresh, offsets, record


class Checkpointing:
    """A Checkpointer on a FakeSender, keeping the messages it acknowledged."""

    def __init__(self) -> None:
        self.sender = FakeSender()
        self.acked: list[EventsMessage] = []
        self.checkpointer = Checkpointer(
            self.sender, "checkpoints", "events", LatePublisher(self.sender, "late"), self.acked.append, 5.0
        )

    def written(self) -> list[Checkpoint]:
        return [decode(r.value) for r in self.sender.on("checkpoints")]


def comparable(state: PartitionState) -> Checkpoint:
    """What a worker resuming the partition must have the same of, as JSON: its open windows,
    watermark and series, its alert state and its next offset."""
    windows = {key: state.windows.to_state()[key] for key in ("open", "series_keys", "watermark", "series")}
    whole = {"windows": windows, "alerts": state.alerts.to_state()}
    return decode(encode(Checkpoint(state.next_offset, whole)))


# -- writing -----------------------------------------------------------------------------------


def test_a_checkpoint_holds_only_the_records_folded_before_it_and_acknowledges_only_those() -> None:
    async def scenario() -> None:
        state, writing = fresh(), Checkpointing()
        fold(state, 0, record(feature(1, 0)))
        fold(state, 1, record(feature(2, 1)))
        writing.sender.holding = True
        checkpointing = asyncio.create_task(writing.checkpointer.checkpoint(3, state))
        await asyncio.sleep(0)
        assert len(writing.sender.held) == 1  # the snapshot is taken and on its way
        async with state.lock:
            fold(state, 2, record(feature(3, 2)))  # the agent goes on meanwhile
        assert writing.acked == []  # nothing is acknowledged before Kafka has the checkpoint
        writing.sender.release()
        await checkpointing

        [sent] = writing.sender.on("checkpoints")
        assert (sent.key, sent.partition) == (b"3", 3)
        assert writing.written()[0].next_offset == 2
        assert offsets(writing.acked) == [0, 1]
        assert offsets(state.unacked) == [2]

    asyncio.run(scenario())


def test_the_records_of_a_checkpoint_kafka_refused_wait_in_order_for_the_next_one() -> None:
    async def scenario() -> None:
        state, writing = fresh(), Checkpointing()
        fold(state, 0, record(feature(1, 0)))
        fold(state, 1, record(feature(2, 1)))
        writing.sender.holding, writing.sender.refusals = True, 1
        checkpointing = asyncio.create_task(writing.checkpointer.checkpoint(0, state))
        await asyncio.sleep(0)
        async with state.lock:
            fold(state, 2, record(feature(3, 2)))
        writing.sender.release()
        with pytest.raises(KafkaError):
            await checkpointing
        assert writing.acked == []
        assert offsets(state.unacked) == [0, 1, 2]

        await writing.checkpointer.checkpoint(0, state)
        assert offsets(writing.acked) == [0, 1, 2] and state.unacked == []
        assert writing.written()[-1].next_offset == 3

    asyncio.run(scenario())


def test_late_records_go_out_after_the_checkpoint_that_holds_them_and_then_leave_the_outbox() -> None:
    async def scenario() -> None:
        state, writing = fresh(), Checkpointing()
        late = orjson.dumps({"project": "p", "offset": 0})
        state.late_outbox.append(late)
        fold(state, 0, record(feature(1, 0)))

        await writing.checkpointer.checkpoint(0, state)

        assert [r.topic for r in writing.sender.acknowledged] == ["checkpoints", "late"]
        assert writing.written()[0].state["late_outbox"] == [late.decode()]
        assert writing.sender.on("late")[0].value == late
        assert state.late_outbox == []

    asyncio.run(scenario())


def test_late_records_kafka_refused_stay_in_the_outbox_for_the_next_checkpoint() -> None:
    async def scenario() -> None:
        state, writing = fresh(), Checkpointing()
        late = orjson.dumps({"project": "p", "offset": 0})
        state.late_outbox.append(late)
        writing.sender.holding = True
        checkpointing = asyncio.create_task(writing.checkpointer.checkpoint(0, state))
        await asyncio.sleep(0)
        writing.sender.release()  # the checkpoint is taken ...
        writing.sender.refusals = 1  # ... and its late record refused
        await checkpointing
        assert state.late_outbox == [late]

        await writing.checkpointer.checkpoint(0, state)
        assert writing.written()[-1].state["late_outbox"] == [late.decode()]
        assert state.late_outbox == []

    asyncio.run(scenario())


def test_a_partition_is_due_for_a_checkpoint_when_records_wait_and_its_last_one_is_old_enough() -> None:
    state, writing = fresh(), Checkpointing()
    assert not writing.checkpointer.due(state)  # nothing waits
    fold(state, 0, record(feature(1, 0)))
    assert not writing.checkpointer.due(state)  # checkpointed (made) less than 5 s ago
    state.checkpointed_at -= 5
    assert writing.checkpointer.due(state)
    state.unacked.clear()
    state.late_outbox.append(b"{}")
    assert writing.checkpointer.due(state)


# -- restoring ---------------------------------------------------------------------------------


def test_a_partition_without_a_checkpoint_starts_fresh_and_reads_every_published_alert() -> None:
    source = FakeCheckpoints()

    states = asyncio.run(Restorer(source, fresh).load([0, 1]))

    assert sorted(states) == [0, 1] and states[0] is not states[1]
    assert states[0].next_offset == 0
    assert ("published_alerts", ({0, 1}, None)) in source.calls


def test_alert_records_are_read_back_from_a_minute_before_the_oldest_checkpoint() -> None:
    source = FakeCheckpoints()
    for partition, taken_at in ((0, 1000.0), (1, 900.0)):
        state = fresh().windows.to_state() | {"alerts": fresh().alerts.to_state(), "taken_at": taken_at}
        source.checkpoints[partition] = Checkpoint(5, state)

    asyncio.run(Restorer(source, fresh).load([0, 1]))

    assert ("published_alerts", ({0, 1}, 840.0)) in source.calls


def test_a_read_the_source_cannot_answer_is_tried_again_until_it_can() -> None:
    class Flaky(FakeCheckpoints):
        """Kafka down for the first two reads of the checkpoints."""

        failures = 2

        def latest(self, partitions: list[int]) -> dict[int, Checkpoint]:
            if self.failures:
                self.failures -= 1
                raise SourceUnavailable("reading checkpoints: KafkaTimeoutError('Unable to bootstrap')")
            return super().latest(partitions)

    source = Flaky()
    source.checkpoints[0] = Checkpoint(7, fresh().windows.to_state() | {"alerts": fresh().alerts.to_state()})

    states = asyncio.run(Restorer(source, fresh, Backoff(initial=0.01, cap=0.01)).load([0]))

    assert source.failures == 0 and states[0].next_offset == 7


# (event number, seconds after T0 + 7 s x number): the copies of an event are stamped within half a
# minute of each other (a retry re-stamped over a minute later is the one no worker recognises).
EVENT = st.tuples(st.integers(0, 12), st.integers(0, 30))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    records=st.lists(
        st.tuples(st.lists(EVENT, min_size=1, max_size=4), st.booleans()),
        min_size=1,
        max_size=10,
    ),
    cut=st.integers(0, 10),
)
def test_a_partition_restored_from_its_checkpoint_folds_the_records_after_it_as_if_never_stopped(
    records: list[tuple[list[tuple[int, int]], bool]], cut: int
) -> None:
    """Records are (events, whether the timer closes windows before it); the same number is a
    copy of the same event, possibly re-stamped. Each record sets the same
    events aside, except that a retry the worker that went on sends as a late event may be found
    a copy by the one that resumed: it holds the ids it read again until the oldest pane open at
    the restart closes (EventTimeWindows.remember). Either way the event counts once."""
    values = [record(*(feature(n, 7 * n + s) for n, s in events)) for events, _ in records]
    cut = min(cut, len(values))

    async def scenario() -> None:
        ran_on, writing = fresh(), Checkpointing()
        for offset, ((_, closes), value) in enumerate(zip(records[:cut], values, strict=False)):
            if closes:
                close(ran_on)
            fold(ran_on, offset, value)
        held_late = list(ran_on.late_outbox)
        await writing.checkpointer.checkpoint(0, ran_on)
        source = FakeCheckpoints({0: writing.written()[0]}, {0: dict(enumerate(values[:cut]))})
        resumed = (await Restorer(source, fresh).load([0]))[0]

        assert comparable(resumed) == comparable(ran_on)
        # Sent after the checkpoint by the worker that stopped, sent again by the one resuming.
        assert resumed.late_outbox == held_late and ran_on.late_outbox == []
        for offset in range(cut, len(values)):
            if records[offset][1]:
                close(ran_on)
                close(resumed)
            went_on, came_back = fold(ran_on, offset, values[offset]), fold(resumed, offset, values[offset])
            assert len(came_back.late) + came_back.duplicates == len(went_on.late) + went_on.duplicates
            assert came_back.duplicates >= went_on.duplicates
        assert comparable(resumed) == comparable(ran_on)

    asyncio.run(scenario())


def test_alert_changes_published_after_the_checkpoint_are_taken_as_the_alert_state() -> None:
    source = FakeCheckpoints()
    rule = RULES.rules[0]
    labels = {"project": "p"} | {key: "x" for key in rule.group_by}
    evaluated = (T0 + timedelta(minutes=5)).isoformat()
    firing = {"rule": rule.name, "state": "firing", "labels": labels}
    source.alerts[0] = [firing | {"evaluated_at": evaluated, "starts_at": evaluated}]

    state = asyncio.run(Restorer(source, fresh).load([0]))[0]

    [group] = state.alerts.to_state()["groups"]
    assert group[0] == rule.name and group[5][1] == "firing"


def test_the_unacknowledged_messages_of_a_restored_partition_start_empty() -> None:
    """The records a checkpoint covers were acknowledged by the worker that wrote it; those
    after it are read again (a Faust message is never part of a checkpoint)."""
    source = FakeCheckpoints()
    ran_on, writing = fresh(), Checkpointing()
    fold(ran_on, 0, record(feature(1, 0)))
    asyncio.run(writing.checkpointer.checkpoint(0, ran_on))
    source.checkpoints[0] = writing.written()[0]

    resumed = asyncio.run(Restorer(source, fresh).load([0]))[0]

    assert resumed.unacked == [] and resumed.next_offset == 1
