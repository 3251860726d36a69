"""Events records folded into their partition's state (streams/folding.py), without Kafka: each
record passes once, in order, whatever it holds; what cannot be folded is dead-lettered; the alert
changes a record causes are out before a checkpoint can hold them."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from faust.types import Message
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from schemas.rules import RuleFile
from schemas.series import DEFAULT_SERIES
from streams.alerts import AlertEngine
from streams.checkpointing import Checkpointer
from streams.dead_letters import DeadLetters
from streams.folding import Folder
from streams.partitions import EventsMessage, Partitions, PartitionState
from streams.publishing import AlertPublisher, LatePublisher, PanePublisher
from streams.series import SeriesResolver
from streams.watermark import Watermark
from streams.windows import EventTimeWindows
from tests.streams.fakes import QUICK, FakeSender, message
from tests.streams.states import NOW, RULES, T0, at, feature, fresh, offsets, record


class Agent:
    """A Folder over one partition (0) of the given state, on a FakeSender; keeps the records it
    acknowledged and counts the times it woke the emission."""

    def __init__(self, state: PartitionState | None = None) -> None:
        self.state = state or fresh()
        self.sender = FakeSender()
        self.acked: list[EventsMessage] = []
        self.wakes = 0
        self.partitions = Partitions(self._load, assigned=lambda: [0])
        self.folder = Folder(
            self.partitions,
            AlertPublisher(self.sender, "alerts", QUICK),
            DeadLetters(self.sender, "dead"),
            self.acked.append,
            self._wake,
            clock=lambda: NOW,
        )

    async def _load(self, partitions: list[int]) -> dict[int, PartitionState]:
        return {0: self.state}

    def _wake(self) -> None:
        self.wakes += 1

    async def fold(self, offset: int, value: bytes) -> Message:
        folded = message(0, offset, value)
        await self.folder.fold(folded, value)
        return folded

    def dead_letters(self) -> list[dict[str, Any]]:
        return [orjson.loads(r.value) for r in self.sender.on("dead")]

    def checkpointer(self) -> Checkpointer:
        late = LatePublisher(self.sender, "late")
        return Checkpointer(self.sender, "checkpoints", "events", late, self.acked.append, 0.0)


def counted(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def revenue(number: int, seconds: float, amount: str, **fields: str) -> dict[str, Any]:
    return {
        "event_id": f"r{number}",
        "type": "revenue",
        "name": "sub",
        "amount": amount,
        "currency": "USD",
        "timestamp": at(seconds),
    } | fields


def test_a_record_is_folded_and_waits_for_the_next_checkpoint_without_its_bytes() -> None:
    agent = Agent()
    before = counted("cosnap_streams_events_folded_total", partition="0")

    folded = asyncio.run(agent.fold(0, record(feature(1, 0), feature(2, 1))))

    assert agent.state.next_offset == 1 and agent.state.unacked == [folded] and folded.value is None
    assert agent.acked == [] and agent.sender.acknowledged == []
    assert counted("cosnap_streams_events_folded_total", partition="0") - before == 2


def test_a_record_in_the_checkpoint_the_partition_resumed_from_is_acknowledged_not_folded_again() -> None:
    state = fresh()
    state.next_offset = 5
    agent = Agent(state)

    replayed = asyncio.run(agent.fold(3, record(feature(1, 0))))

    assert agent.acked == [replayed]
    assert state.next_offset == 5 and state.unacked == [] and state.windows.to_state()["open"]["10s"] == {}


def test_an_unreadable_record_is_dead_lettered_whole_and_its_partition_goes_on() -> None:
    agent = Agent()

    unreadable = asyncio.run(agent.fold(0, b"not an envelope"))

    [dead] = agent.dead_letters()
    assert (dead["project"], dead["index"], dead["request_id"]) == (None, None, "events:0:0")
    assert dead["reason"].startswith("streams worker could not read the envelope")
    assert dead["raw"] == "not an envelope"
    assert agent.state.next_offset == 1 and agent.state.unacked == [unreadable]


def test_events_no_window_can_hold_are_dead_lettered_one_each_with_their_reason_and_request() -> None:
    agent = Agent()
    before = counted("cosnap_streams_refused_events_total")

    asyncio.run(agent.fold(0, record(revenue(1, 0, "9.99"), revenue(2, 1, "1E+40", request_id="req-2"))))

    [dead] = agent.dead_letters()
    assert (dead["project"], dead["index"], dead["request_id"]) == ("p", 1, "req-2")
    assert "Decimal(38, 9)" in dead["reason"] and orjson.loads(dead["raw"])["amount"] == "1E+40"
    assert counted("cosnap_streams_refused_events_total") - before == 1
    assert agent.state.next_offset == 1


def test_the_first_event_of_a_name_over_its_cap_is_dead_lettered_and_counted_under_overflow() -> None:
    windows = EventTimeWindows(Watermark(0, 10**9), grace_s=0, series=SeriesResolver(DEFAULT_SERIES, 1))
    agent = Agent(PartitionState(windows, AlertEngine(RULES, idle_s=10**9)))
    other = feature(2, 1) | {"feature": "g"}

    asyncio.run(agent.fold(0, record(feature(1, 0), other)))

    [dead] = agent.dead_letters()
    assert dead["index"] == 1 and "__overflow__" in dead["reason"]


def test_a_record_that_moves_the_watermark_past_a_window_wakes_the_emission() -> None:
    async def scenario() -> None:
        agent = Agent()
        await agent.fold(0, record(feature(1, 0)))
        assert agent.wakes == 0
        await agent.fold(1, record(feature(2, 15)))  # the pane of 0-10 s is closed now
        assert agent.wakes == 1

    asyncio.run(scenario())


def test_late_events_go_to_the_outbox_with_the_record_they_came_in() -> None:
    async def scenario() -> None:
        agent = Agent()
        before = counted("cosnap_streams_late_events_total", project="p")
        await agent.fold(0, record(feature(1, 100)))
        await agent.fold(1, record(feature(2, 0)))  # its pane closed when the first was folded
        [late] = map(orjson.loads, agent.state.late_outbox)
        assert (late["project"], late["offset"], [e["event_id"] for e in late["events"]]) == ("p", 1, ["e2"])
        assert counted("cosnap_streams_late_events_total", project="p") - before == 1

    asyncio.run(scenario())


def test_a_record_the_windows_or_rules_fail_on_is_dead_lettered_whole_and_the_partition_goes_on() -> None:
    class Failing:
        def add(self, *_: Any) -> list[dict[str, Any]]:
            raise RuntimeError("a bug")

    state = fresh()
    state.alerts = Failing()  # rules that raise, as a bug would
    agent = Agent(state)

    asyncio.run(agent.fold(0, record(feature(1, 0))))

    [dead] = agent.dead_letters()
    assert dead["reason"] == "streams worker could not read the envelope: a bug"
    assert state.next_offset == 1 and len(state.unacked) == 1


def test_a_checkpoint_never_holds_an_alert_state_kafka_has_not_acknowledged() -> None:
    rules = RuleFile.model_validate(
        {
            "rules": [
                {
                    "name": "burst",
                    "window": "1m",
                    "op": ">=",
                    "threshold": 2,
                    "match": {"type": "feature"},
                    "annotations": {"summary": "{value}"},
                }
            ]
        }
    )

    async def scenario() -> None:
        state = fresh()
        state.alerts = AlertEngine(rules, idle_s=10**9)
        agent = Agent(state)
        agent.sender.holding = True
        folding = asyncio.create_task(agent.fold(0, record(feature(1, 0), feature(2, 1))))
        await asyncio.sleep(0.01)
        checkpointing = asyncio.create_task(agent.checkpointer().checkpoint(0, state))
        await asyncio.sleep(0.01)
        assert [r.topic for r in agent.sender.held] == ["alerts"]  # the checkpoint waits for it
        agent.sender.release()
        await asyncio.gather(folding, checkpointing)
        assert [r.topic for r in agent.sender.acknowledged] == ["alerts", "checkpoints"]

    asyncio.run(scenario())


def test_a_record_that_makes_a_spanning_group_hold_sends_the_workers_parts_with_it() -> None:
    """Envelopes keyed by series: a rule that rises (a count above a threshold) and spans
    partitions is evaluated by the merging stage. The record whose events make one of its groups
    hold on its partition alone sends the part of every partition the worker owns at once (the
    stage evaluates a group once every partition's clock is in its pane), without waiting for
    the timer; later records of that group and pane wait for it."""
    rules = RuleFile.model_validate(
        {
            "rules": [
                {
                    "name": "probe",
                    "window": "10s",
                    "op": ">=",
                    "threshold": 2,
                    "match": {"type": "feature"},
                    "group_by": ["feature"],
                    "annotations": {"summary": "{value}"},
                }
            ]
        }
    )
    states = {n: fresh() for n in (0, 1)}
    for state in states.values():
        state.alerts = AlertEngine(rules, idle_s=10**9, spanning=frozenset({"probe"}))

    async def load(partitions: list[int]) -> dict[int, PartitionState]:
        return {n: states[n] for n in partitions}

    async def scenario() -> None:
        sender = FakeSender()
        folder = Folder(
            Partitions(load, assigned=lambda: [0, 1]),
            AlertPublisher(sender, "alerts", QUICK),
            DeadLetters(sender, "dead"),
            lambda _: None,
            lambda: None,
            PanePublisher(sender, "panes", QUICK),
            clock=lambda: NOW,
        )
        values = [record(feature(n, n)) for n in range(4)]
        await folder.fold(message(1, 0, values[0]), values[0])
        await folder.fold(message(0, 0, values[1]), values[1])
        assert sender.on("panes") == []  # no group holds on a partition's own events: the timer sends
        await folder.fold(message(0, 1, values[2]), values[2])
        parts = [orjson.loads(r.value) for r in sender.on("panes")]
        assert [(part["source"], part["offset"]) for part in parts] == [(0, 2), (1, 1)]
        for part in parts:
            [[rule, project, group, sent]] = part["groups"]
            assert (rule, project, group) == ("probe", "p", ["f"])
            [[count, *_], _] = sent["panes"][str(int(T0.timestamp()))]
            assert count == 2 - part["source"]  # each partition's own part of the pane
        await folder.fold(message(0, 2, values[3]), values[3])
        assert len(sender.on("panes")) == 2  # once per group and pane
        assert sender.on("alerts") == []  # evaluated where the parts are merged

    asyncio.run(scenario())


KINDS = st.sampled_from(["on time", "unreadable", "refused", "copy", "late"])


@settings(max_examples=50, deadline=None)
@given(kinds=st.lists(KINDS, max_size=12))
def test_any_record_passes_once_in_order_and_is_dead_lettered_whole_only_when_unreadable(
    kinds: list[str],
) -> None:
    values = {
        "on time": lambda n: record(feature(n, 100 + n)),
        "unreadable": lambda n: b"\x00" * n,
        "refused": lambda n: record(revenue(n, 100 + n, "1E+40")),
        "copy": lambda n: record(feature(0, 100)),
        "late": lambda n: record(feature(n, 0)),
    }

    async def scenario() -> None:
        agent = Agent()
        await agent.fold(0, record(feature(0, 100)))
        for offset, kind in enumerate(kinds, start=1):
            await agent.fold(offset, values[kind](offset))
        await agent.checkpointer().checkpoint(0, agent.state)
        assert offsets(agent.acked) == list(range(len(kinds) + 1))
        assert agent.state.next_offset == len(kinds) + 1
        whole = [dead for dead in agent.dead_letters() if dead["index"] is None]
        assert len(whole) == kinds.count("unreadable")
        assert len(agent.dead_letters()) == kinds.count("unreadable") + kinds.count("refused")

    asyncio.run(scenario())
