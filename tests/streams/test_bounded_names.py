"""Bounded names: at most N distinct names per project and event type; the events of further
names are counted under `__overflow__` (and a feature's actions are capped like any dimension),
the cap survives checkpoints, and on real Kafka the aggregates still add up to every event, the
worker's /metrics counts the overflow and the dead-letter topic names each overflowing name once."""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition

from cosnap_metrics.broker import KafkaBroker
from schemas.records import WindowAggregate
from schemas.series import DEFAULT_SERIES, OVERFLOW, SeriesConfig, overflow_name
from schemas.settings import StreamsSettings
from streams.checkpoint import Checkpoint, decode, encode
from streams.envelope import EnvelopeView
from streams.envelope import decode as decode_envelope
from streams.series import REPORTED_NAMES, SeriesResolver
from streams.watermark import Watermark
from streams.windows import EventTimeWindows
from tests.conftest import Pipeline, wait_for

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat()


def envelope(*events: dict[str, Any], project: str = "p") -> EnvelopeView:
    return decode_envelope(orjson.dumps({"project": project, "events": list(events)}))


def feature(seconds: float, name: str, action: str = "used") -> dict[str, Any]:
    return {
        "event_id": uuid.uuid4().hex,
        "type": "feature",
        "feature": name,
        "action": action,
        "timestamp": at(seconds),
    }


def step(seconds: float, funnel: str, name: str, index: int) -> dict[str, Any]:
    return {
        "event_id": uuid.uuid4().hex,
        "type": "conversion",
        "funnel": funnel,
        "step": name,
        "step_index": index,
        "timestamp": at(seconds),
    }


def windows(max_names: int, config: SeriesConfig = DEFAULT_SERIES) -> tuple[EventTimeWindows, SeriesResolver]:
    resolver = SeriesResolver(config, max_names=max_names)
    return EventTimeWindows(Watermark(lateness_s=0, idle_s=5), grace_s=0, series=resolver), resolver


def drain(w: EventTimeWindows, now: float = 0) -> list[dict[str, Any]]:
    records = []
    for closed in w.close_ready(now):
        for _, value in closed.records:
            record = orjson.loads(value)
            WindowAggregate.model_validate(record)
            records.append(record)
    return records


def minute_counts(records: list[dict[str, Any]]) -> Counter[tuple[str, str, str]]:
    """(type, name, action) -> count over the minute windows of the data (not the closer's)."""
    return Counter(
        {
            (r["type"], r["name"], r["dims"].get("action", "")): r["count"]
            for r in records
            if r["granularity"] == "1m" and r["window_start"] == "2026-11-26T12:00:00Z"
        }
    )


def closer() -> dict[str, Any]:
    """An event an hour later: every window of the data closes."""
    return feature(3600, "closer")


def test_names_beyond_the_cap_are_counted_under_overflow() -> None:
    w, names = windows(max_names=3)
    sent = [f"f{i}" for i in range(8)]
    w.add_envelope(0, envelope(*(feature(i, name) for i, name in enumerate(sent) for _ in range(i + 1))), 0)
    counts, reported = names.take_overflow()
    w.add_envelope(0, envelope(closer()), 0)
    closed = minute_counts(drain(w))
    assert closed == {
        ("feature", "f0", "used"): 1,
        ("feature", "f1", "used"): 2,
        ("feature", "f2", "used"): 3,
        ("feature", OVERFLOW, "used"): 4 + 5 + 6 + 7 + 8,
    }
    assert counts == {"feature": 4 + 5 + 6 + 7 + 8}
    # One report per name over the cap, with the first of its events and a reason naming the cap.
    assert [event.feature for event, _ in reported] == ["f3", "f4", "f5", "f6", "f7"]  # type: ignore[union-attr]
    assert all(
        reason.startswith("overflow: the project has 3 feature names, the cap (COSNAP_MAX_NAMES_PER_TYPE)")
        for _, reason in reported
    )
    assert "'f3'" in reported[0][1] and "'__overflow__'" in reported[0][1]
    counts, reported = names.take_overflow()  # the closer: the project's 4th name
    assert counts == {"feature": 1} and [event.feature for event, _ in reported] == ["closer"]  # type: ignore[union-attr]


def test_the_cap_is_per_project_and_per_type() -> None:
    w, names = windows(max_names=2)
    w.add_envelope(0, envelope(*(feature(1, f"f{i}") for i in range(3)), project="a"), 0)
    w.add_envelope(0, envelope(*(feature(1, f"f{i}") for i in range(3)), project="b"), 0)
    w.add_envelope(0, envelope(*(step(1, "onboarding", f"s{i}", i) for i in range(3)), project="a"), 0)
    assert names.take_overflow()[0] == {"feature": 2, "conversion": 1}
    w.add_envelope(0, envelope(closer(), project="a"), 0)
    w.add_envelope(0, envelope(closer(), project="b"), 0)
    closed = [r for r in drain(w) if r["granularity"] == "1m" and r["window_start"] == "2026-11-26T12:00:00Z"]
    by_project = sorted((r["project"], r["type"], r["name"], r["count"]) for r in closed)
    assert by_project == [
        ("a", "conversion", "__overflow__:__overflow__", 1),
        ("a", "conversion", "onboarding:s0", 1),
        ("a", "conversion", "onboarding:s1", 1),
        ("a", "feature", OVERFLOW, 1),
        ("a", "feature", "f0", 1),
        ("a", "feature", "f1", 1),
        ("b", "feature", OVERFLOW, 1),
        ("b", "feature", "f0", 1),
        ("b", "feature", "f1", 1),
    ]
    # The funnel:step name is the unit; the overflow of steps of any funnel has no place in one.
    overflow = next(r for r in closed if r["name"] == overflow_name("conversion"))
    assert "step_index" not in overflow and "ratio_to_previous" not in overflow


def test_a_features_actions_are_capped_like_any_dimension() -> None:
    w, names = windows(max_names=10, config=SeriesConfig(rules=DEFAULT_SERIES.rules, max_values=3))
    w.add_envelope(0, envelope(*(feature(1, "share", f"a{i}") for i in range(5))), 0)
    w.add_envelope(0, envelope(*(feature(2, "share", f"a{i}") for i in range(5))), 0)
    w.add_envelope(0, envelope(closer()), 0)
    assert minute_counts(drain(w)) == {
        ("feature", "share", "a0"): 2,
        ("feature", "share", "a1"): 2,
        ("feature", "share", "a2"): 2,
        ("feature", "share", OVERFLOW): 4,
    }
    assert names.take_overflow()[0] == {}  # an action over its cap is no name over the cap


def test_each_name_over_the_cap_is_reported_once_and_at_most_a_hundred_per_type() -> None:
    w, names = windows(max_names=1)
    sent = [f"f{i}" for i in range(REPORTED_NAMES + 50)]
    for _ in range(3):
        w.add_envelope(0, envelope(*(feature(1, name) for name in sent)), 0)
    counts, reported = names.take_overflow()
    assert counts == {"feature": 3 * (len(sent) - 1)}
    assert [event.feature for event, _ in reported] == sent[1 : REPORTED_NAMES + 1]  # type: ignore[union-attr]
    assert "later ones are only counted" in reported[-1][1]
    assert "later ones" not in reported[-2][1]


def test_a_restored_checkpoint_maps_every_name_as_the_first_run_did() -> None:
    """The cap's state is in the checkpoint: names admitted before it stay admitted, names over
    the cap stay over it, and names reported are not reported again."""
    stream = [
        envelope(*(feature(t + i / 10, f"f{(t * 7 + i) % 40}", f"a{i % 5}") for i in range(10)))
        for t in range(0, 200, 2)
    ] + [envelope(closer())]
    config = SeriesConfig(rules=DEFAULT_SERIES.rules, max_values=3)
    (whole, whole_names), (first, first_names) = windows(12, config), windows(12, config)
    closed_whole, closed_split = [], []
    reported_whole, reported_split = [], []
    for i, env in enumerate(stream):
        whole.add_envelope(0, env, 0)
        reported_whole += whole_names.take_overflow()[1]
        closed_whole += drain(whole)
        if i < 40:
            first.add_envelope(0, env, 0)
            reported_split += first_names.take_overflow()[1]
            closed_split += drain(first)
    checkpoint = decode(encode(Checkpoint(40, first.to_state())))
    resumed, resumed_names = windows(12, config)
    resumed.restore(checkpoint.state, 0)
    for env in stream[checkpoint.next_offset :]:
        resumed.add_envelope(0, env, 0)
        reported_split += resumed_names.take_overflow()[1]
        closed_split += drain(resumed)
    assert closed_split == closed_whole
    assert [reason for _, reason in reported_split] == [reason for _, reason in reported_whole]
    closed_names = {r["name"] for r in closed_whole}
    assert len(closed_names - {OVERFLOW, "closer"}) == 12 and OVERFLOW in closed_names


def test_names_stay_admitted_after_their_series_are_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forgetting series whose windows closed (to bound memory) forgets no decision of the cap:
    an admitted name comes back as itself, a new one still goes to `__overflow__`."""
    monkeypatch.setattr("streams.windows._MIN_SERIES_KEPT", 1)
    w, names = windows(max_names=2)
    w.add_envelope(0, envelope(feature(1, "f0"), feature(1, "f1")), 0)
    w.add_envelope(0, envelope(feature(7200, "f0")), 0)  # closes the first hour: its series go
    drain(w)
    assert len(names) == 1
    w.add_envelope(0, envelope(feature(7201, "f1"), feature(7201, "f2")), 0)
    w.add_envelope(0, envelope(feature(9000, "f0")), 0)
    closed = drain(w)
    minute = Counter(
        r["name"] for r in closed if r["granularity"] == "1m" and r["window_start"].endswith("14:00:00Z")
    )
    assert minute == {"f0": 1, "f1": 1, OVERFLOW: 1}


def test_a_checkpoint_from_before_the_cap_admits_the_names_of_its_open_windows() -> None:
    first, _ = windows(max_names=100)
    first.add_envelope(0, envelope(feature(1, "f0"), feature(1, "f1"), feature(1, "f2")), 0)
    state = decode(encode(Checkpoint(1, first.to_state()))).state
    for key in ("names", "extras", "reported"):
        del state["series"][key]
    resumed, resumed_names = windows(max_names=3)
    resumed.restore(state, 0)
    resumed.add_envelope(0, envelope(feature(2, "f2"), feature(2, "f3"), feature(2, "f0")), 0)
    assert resumed_names.take_overflow()[0] == {"feature": 1}
    resumed.add_envelope(0, envelope(closer()), 0)
    assert minute_counts(drain(resumed)) == {
        ("feature", "f0", "used"): 2,
        ("feature", "f1", "used"): 1,
        ("feature", "f2", "used"): 2,
        ("feature", OVERFLOW, "used"): 1,
    }


def test_the_cap_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert StreamsSettings().max_names_per_type == 10_000
    monkeypatch.setenv("COSNAP_MAX_NAMES_PER_TYPE", "250")
    assert StreamsSettings().max_names_per_type == 250


# -- on real Kafka ---------------------------------------------------------------------------------

CAP = 20
NAMES = 60


def dead_letters(kafka: KafkaBroker, topic: str) -> list[dict[str, Any]]:
    consumer = KafkaConsumer(bootstrap_servers=kafka.bootstrap, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        ends = consumer.end_offsets(partitions)
        found = []
        while any(consumer.position(tp) < end for tp, end in ends.items()):
            for records in consumer.poll(timeout_ms=500).values():
                found += [json.loads(record.value) for record in records]
        return found
    finally:
        consumer.close()


def overflow_metric(pipeline: Pipeline) -> dict[str, float]:
    text = httpx.get(f"{pipeline.status_urls['streams']}/metrics", timeout=10).text
    found = re.findall(r'^cosnap_streams_overflow_events_total\{type="(\w+)"\} (\S+)$', text, re.MULTILINE)
    return {kind: float(value) for kind, value in found}


@pytest.mark.kafka
@pytest.mark.e2e
def test_names_beyond_the_cap_land_in_overflow_with_every_event_counted(
    pipeline: Pipeline, kafka: KafkaBroker
) -> None:
    """60 feature names, name i sent i+1 times, with a cap of 20: the aggregates hold the first
    20 names as themselves and the other 40 under `__overflow__`, and add up to every event;
    the worker's /metrics counts the overflowing events, and the dead-letter topic names each
    overflowing name once."""
    pipeline.env["COSNAP_MAX_NAMES_PER_TYPE"] = str(CAP)
    pipeline.start("sink", "streams", "ingest")
    now = datetime.now(UTC)
    events = []
    for i in range(NAMES):
        for _ in range(i + 1):
            events.append(
                {
                    "event_id": uuid.uuid4().hex,
                    "type": "feature",
                    "feature": f"bounded.f{i:02d}",
                    "action": "used",
                    "timestamp": now.isoformat(),
                }
            )
    pipeline.post(events, batch=500)  # in order: the first CAP names come first
    total = len(events)
    expected_overflow = total - sum(range(1, CAP + 1))

    def minutes() -> dict[str, int]:
        rows = pipeline.query(
            "SELECT name, sum(count) FROM metrics.aggregates FINAL WHERE granularity = '1m' "
            "AND type = 'feature' GROUP BY name"
        )
        return {str(name): int(str(count)) for name, count in rows}

    found = wait_for(lambda: sum(minutes().values()) == total and minutes(), timeout=120)
    assert found, (minutes(), pipeline.log("streams"))
    assert found == {f"bounded.f{i:02d}": i + 1 for i in range(CAP)} | {OVERFLOW: expected_overflow}
    panes = pipeline.query(
        "SELECT sum(count), uniqExact(name) FROM metrics.aggregates FINAL WHERE granularity = '10s' "
        "AND type = 'feature'"
    )
    assert panes == [[total, CAP + 1]]
    assert overflow_metric(pipeline) == {
        "revenue": 0.0,
        "conversion": 0.0,
        "feature": float(expected_overflow),
        "performance": 0.0,
    }
    letters = wait_for(
        lambda: (
            (found := dead_letters(kafka, pipeline.topics.dead_letter))
            and len(found) >= NAMES - CAP
            and found
        ),
        timeout=30,
    )
    overflowing = sorted(json.loads(letter["raw"])["feature"] for letter in letters)
    assert overflowing == [f"bounded.f{i:02d}" for i in range(CAP, NAMES)]
    assert all(
        letter["reason"].startswith("overflow: the project has 20 feature names") for letter in letters
    )
    assert all(letter["project"] == "cosnap-test" and letter["request_id"] for letter in letters)
