"""Alert rules whose groups span events partitions (envelopes keyed by series), without Kafka:
each partition's engine folds its events and hands on its part of the panes, the merging stage
evaluates the rules on the merged panes. Whatever the number of partitions, the order in which
the parts arrive, parts sent again and partitions restarted from a snapshot, the alerts are
those of one engine that saw every event: the same groups firing and resolving in the same
panes, once."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.rules import RuleFile
from schemas.series import DEFAULT_SERIES
from streams.alerts import AlertEngine
from streams.checkpoint import Checkpoint, encode
from streams.checkpoint import decode as decode_checkpoint
from streams.envelope import decode
from streams.merging import PaneMerger
from streams.series import SeriesResolver
from streams.watermark import Watermark
from streams.windows import Accumulator, EventTimeWindows, iso
from tests.ingest.contract_strategies import examples

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
NOW = 2_000_000_000.0  # wall clock: no partition is ever idle here
METRICS = [f"m{n}.latency" for n in range(8)]
ROUTES = ["/a", "/b"]
COMMON = {"window": "30s", "group_by": ["route"], "annotations": {"summary": "{value}"}}
FAILED = {"type": "performance", "tags": {"status": "failed"}}
RULES = RuleFile.model_validate(
    {
        "rules": [
            {"name": "failures", "match": FAILED, "aggregate": "count", "op": ">=", "threshold": 20} | COMMON,
            {
                "name": "failure_ratio",
                "match": FAILED,
                "of": {"type": "performance"},
                "aggregate": "ratio",
                "op": ">",
                "threshold": 0.3,
                "min_samples": 10,
            }
            | COMMON,
            {
                "name": "slowest",
                "match": {"type": "performance"},
                "aggregate": "p95",
                "op": ">",
                "threshold": 800,
            }
            | COMMON,
        ]
    }
)
SPANNING = frozenset(rule.name for rule in RULES.rules)
RECORD_EVENTS = 5
STATES = ("firing", "resolved")


def events(seed: int) -> list[dict[str, Any]]:
    """Four minutes of one project's latencies over 8 metrics and 2 routes, ~5 per second, in
    time order; between 100 s and 115 s most of them fail and are slow, on every metric."""
    rng = random.Random(seed)
    out = []
    for n in range(1200):
        seconds = n / 5
        burst = 100 <= seconds < 115 and rng.random() < 0.8
        tags = {"route": rng.choice(ROUTES), "status": "failed" if burst else "ok"}
        value = 900.0 + rng.random() * 100 if burst else rng.random() * 300
        timestamp = (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")
        metric = rng.choice(METRICS)
        event = {"type": "performance", "metric": metric, "value": value, "unit": "ms", "tags": tags}
        out.append(event | {"event_id": f"e{n}", "timestamp": timestamp})
    return out


class Partition:
    """One events partition: its windows and engine, and its records (the events of its keys)."""

    def __init__(self, number: int, records: list[bytes]) -> None:
        self.number = number
        self.records = records
        self.next = 0
        self.windows, self.engine = self._fresh()

    @staticmethod
    def _fresh() -> tuple[EventTimeWindows, AlertEngine]:
        windows = EventTimeWindows(
            Watermark(lateness_s=0, idle_s=10**9), grace_s=math.inf, series=SeriesResolver(DEFAULT_SERIES)
        )
        return windows, AlertEngine(RULES, idle_s=10**9, spanning=SPANNING)

    def fold_next(self) -> None:
        envelope = decode(self.records[self.next])
        changes = self.engine.add(envelope.project, self.windows.add_envelope(0, envelope, NOW), NOW)
        assert changes == []  # spanning rules are not evaluated per partition
        self.next += 1

    def part(self) -> dict[str, Any] | None:
        part = self.engine.take_partials(NOW)
        return None if part is None else {"source": self.number, "offset": self.next, **part}

    def restart(self, snapshot: bytes) -> None:
        """Resume from a checkpoint taken earlier: the records after it are folded again."""
        checkpoint = decode_checkpoint(snapshot)
        self.next = checkpoint.next_offset
        self.windows, self.engine = self._fresh()
        self.windows.restore(checkpoint.state, NOW)
        self.engine.restore(checkpoint.state["alerts"], NOW)

    def snapshot(self) -> bytes:
        return encode(Checkpoint(self.next, self.windows.to_state() | {"alerts": self.engine.to_state()}))


def records(partitions: int, seed: int) -> list[list[bytes]]:
    """The events spread by series key (project|type|name: here, by metric) over `partitions`,
    each of which gets some, in records of a few."""
    by_partition: list[list[dict[str, Any]]] = [[] for _ in range(partitions)]
    for event in events(seed):
        by_partition[METRICS.index(event["metric"]) % partitions].append(event)
    return [
        [
            orjson.dumps({"project": "p", "events": evs[n : n + RECORD_EVENTS]})
            for n in range(0, len(evs), RECORD_EVENTS)
        ]
        for evs in by_partition
    ]


def as_sent(part: dict[str, Any]) -> dict[str, Any]:
    """The part as the merging stage reads it from the panes topic (streams/publishing.py)."""
    loaded: dict[str, Any] = orjson.loads(orjson.dumps(part, option=orjson.OPT_NON_STR_KEYS))
    return loaded


def outcome(changes: list[dict[str, Any]]) -> list[tuple[str, str, str, int]]:
    """(rule, route, state, pane) of each published change, in order per group."""
    seen = [
        (
            c["rule"],
            c["labels"]["route"],
            c["state"],
            int(datetime.fromisoformat(c["evaluated_at"]).timestamp()) // 10,
        )
        for c in changes
    ]
    return sorted(seen)


def failures_oracle(seed: int) -> list[tuple[str, str, str, int]]:
    """When the count rule fires and resolves per route, from the events alone: it fires in the
    pane of the 20th failure (the burst is shorter than the window) and resolves in the first
    pane after whose window [pane - 30 s, pane] holds fewer than 20."""
    out = []
    for route in ROUTES:
        panes = [
            int(datetime.fromisoformat(e["timestamp"]).timestamp()) // 10
            for e in events(seed)
            if e["tags"] == {"route": route, "status": "failed"}
        ]
        fired = panes[19]
        resolved = next(p for p in range(fired + 1, fired + 10) if sum(p - 3 <= q <= p for q in panes) < 20)
        out += [("failures", route, "firing", fired), ("failures", route, "resolved", resolved)]
    return sorted(out)


def merged(count: int, seed: int, schedule: random.Random) -> list[dict[str, Any]]:
    """What the merging stage publishes when `count` partitions fold the same events, their
    records and parts interleaved by `schedule`: parts are taken at random moments, some sent
    twice or late, and a partition now and then restarts from an earlier snapshot."""
    partitions = [Partition(n, spread) for n, spread in enumerate(records(count, seed))]
    merger = PaneMerger(AlertEngine(RULES, idle_s=10**9), count, idle_s=10**9)
    snapshots = {p.number: p.snapshot() for p in partitions}
    sent: list[dict[str, Any]] = []
    changes: list[dict[str, Any]] = []
    while any(p.next < len(p.records) for p in partitions):
        partition = schedule.choice([p for p in partitions if p.next < len(p.records)])
        for _ in range(schedule.randint(1, 4)):
            if partition.next < len(partition.records):
                partition.fold_next()
                if partition.engine.urgent and schedule.random() < 0.5:
                    # What the worker's Folder does: the part leaves with the record (or, by
                    # the other half, on a later tick, as when its send is slow).
                    part = partition.part()
                    if part is not None:
                        sent.append(part)
                        changes += merger.add(as_sent(part), NOW)
        roll = schedule.random()
        if roll < 0.02:
            partition.restart(snapshots[partition.number])  # parts taken since may never have been sent
        elif roll < 0.1:
            snapshots[partition.number] = partition.snapshot()
        if schedule.random() < 0.5:
            # A tick: every partition hands on its part (a worker owns several), in any order.
            for ticking in schedule.sample(partitions, len(partitions)):
                part = ticking.part()
                if part is not None:
                    sent.append(part)
                    changes += merger.add(as_sent(part), NOW)
            if sent and schedule.random() < 0.2:
                changes += merger.add(schedule.choice(sent), NOW)  # delivered again
    for partition in partitions:
        part = partition.part()
        if part is not None:
            changes += merger.add(as_sent(part), NOW)
    return changes + merger.tick(NOW)


def one_partition(seed: int) -> list[dict[str, Any]]:
    """What the stage publishes with one partition, handing on its part after every record."""
    [partition] = [Partition(0, spread) for spread in records(1, seed)]
    merger = PaneMerger(AlertEngine(RULES, idle_s=10**9), 1, idle_s=10**9)
    changes = []
    while partition.next < len(partition.records):
        partition.fold_next()
        part = partition.part()
        if part is not None:
            changes += merger.add(as_sent(part), NOW)
    return changes


def test_each_rule_spanning_partitions_fires_and_resolves_once_per_group_in_its_pane() -> None:
    changes = merged(6, seed=1, schedule=random.Random(1))
    states = sorted((c["rule"], c["labels"]["route"], c["state"]) for c in changes)
    assert len(states) == len(set(states))  # once each
    assert {(rule, state) for rule, _, state in states} == {(r, s) for r in SPANNING for s in STATES}
    assert [o for o in outcome(changes) if o[0] == "failures"] == failures_oracle(1)
    assert outcome(changes) == outcome(one_partition(1))


@pytest.mark.parametrize("count", [1, 2, 3, 6])
def test_the_merged_alerts_do_not_depend_on_how_many_partitions_hold_the_events(count: int) -> None:
    assert outcome(merged(count, seed=2, schedule=random.Random(count))) == outcome(one_partition(2))


@settings(max_examples=examples(25), deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([2, 3, 6]))
def test_any_order_of_parts_redelivery_and_restart_gives_the_same_alerts(schedule: int, count: int) -> None:
    assert outcome(merged(count, seed=3, schedule=random.Random(schedule))) == outcome(one_partition(3))


def test_a_part_ahead_of_the_merged_clock_fires_once_the_clock_reaches_its_pane() -> None:
    """A partition's part may hold a pane the merged clock has not reached (another partition
    is behind): the group fires as soon as that one's part moves the clock into the pane, not
    when the pane closes."""
    merger = PaneMerger(AlertEngine(RULES, idle_s=10**9), 2, idle_s=10**9)
    t0 = T0.timestamp()
    pane = [Accumulator(25, 25 * 10**9, 1.0, 1.0, False).to_state(), None]
    failures = {"first_seen": t0 + 20, "panes": {str(int(t0) + 20): pane}, "hours": {}, "users": {}}
    ahead = {"source": 0, "offset": 5, "clock": t0 + 21, "idle": False, "minutes": []}
    behind = {"source": 1, "offset": 3, "clock": t0 + 15, "idle": False, "groups": [], "minutes": []}
    assert merger.add(behind, NOW) == []
    assert merger.add(ahead | {"groups": [["failures", "p", ["/a"], failures]]}, NOW) == []  # clock at 15 s
    [firing] = merger.add(behind | {"offset": 4, "clock": t0 + 22}, NOW)
    assert (firing["rule"], firing["state"], firing["labels"]["route"]) == ("failures", "firing", "/a")
    assert firing["evaluated_at"] == iso(T0.timestamp() + 21)  # the merged clock: the older of 21 s and 22 s


def test_a_partition_is_urgent_once_per_pane_when_its_own_part_makes_a_rising_group_hold() -> None:
    """The count rule holds on one partition's events alone from the 20th failure of a route
    on: the engine asks for its part to leave at once (the Folder sends it with the record),
    once per group and pane at most; rules that could still change with other partitions'
    events (a ratio, a percentile) never make it urgent."""
    [partition] = [Partition(0, spread) for spread in records(1, seed=1)]
    failed = dict.fromkeys(ROUTES, 0)  # the burst is shorter than the rule's window: all count
    urgent: list[tuple[int, int]] = []  # (pane, most failures of a route) of each urgent record
    while partition.next < len(partition.records):
        for event in orjson.loads(partition.records[partition.next])["events"]:
            if event["tags"]["status"] == "failed":
                failed[event["tags"]["route"]] += 1
        partition.fold_next()
        if partition.engine.urgent:
            urgent.append((int(partition.engine.clock(NOW)) // 10, max(failed.values())))
            assert partition.part() is not None
            assert not partition.engine.urgent  # the part is taken
    assert urgent and urgent[0][1] == 20  # from the record holding the 20th failure of a route
    assert all(most >= 20 for _, most in urgent)
    panes = [pane for pane, _ in urgent]
    assert max(panes.count(pane) for pane in panes) <= len(ROUTES)  # once per group and pane


def test_only_spanning_rules_that_rise_make_a_partition_urgent() -> None:
    """With the count rule left out, the ratio and the percentile rules hold through the burst
    on the partition's own events, and the part still waits for the tick."""
    rules = RuleFile(rules=[rule for rule in RULES.rules if rule.name != "failures"])
    [spread] = records(1, seed=1)
    windows = EventTimeWindows(
        Watermark(lateness_s=0, idle_s=10**9), grace_s=math.inf, series=SeriesResolver(DEFAULT_SERIES)
    )
    engine = AlertEngine(rules, idle_s=10**9, spanning=SPANNING - {"failures"})
    for value in spread:
        envelope = decode(value)
        engine.add(envelope.project, windows.add_envelope(0, envelope, NOW), NOW)
        assert not engine.urgent
