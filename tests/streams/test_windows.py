"""Panes, roll-ups, the watermark, grace and late routing, series dimensions: without Kafka."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson

import streams.windows
from schemas.records import WindowAggregate
from schemas.series import DEFAULT_SERIES, OVERFLOW, DimensionRule, SeriesConfig
from streams.checkpoint import Checkpoint, decode, encode
from streams.envelope import EnvelopeView
from streams.envelope import decode as decode_envelope
from streams.series import SeriesResolver, series_id
from streams.sketch import DDSketch
from streams.watermark import Watermark
from streams.windows import EventTimeWindows

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
START = int(T0.timestamp())


def envelope(*events: dict[str, Any], project: str = "p") -> EnvelopeView:
    """An envelope of `events`, each with an event_id of its own unless it names one."""
    events = tuple({"event_id": uuid.uuid4().hex} | event for event in events)
    return decode_envelope(orjson.dumps({"project": project, "events": list(events)}))


def at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat()


def revenue(seconds: float, amount: str, currency: str = "USD") -> dict[str, Any]:
    return {
        "type": "revenue",
        "name": "sub",
        "amount": amount,
        "currency": currency,
        "timestamp": at(seconds),
    }


def latency(seconds: float, value: float, **tags: str) -> dict[str, Any]:
    event = {
        "type": "performance",
        "metric": "api.latency",
        "value": value,
        "unit": "ms",
        "timestamp": at(seconds),
    }
    return event | ({"tags": tags} if tags else {})


def step(seconds: float, name: str, index: int) -> dict[str, Any]:
    return {
        "type": "conversion",
        "funnel": "checkout",
        "step": name,
        "step_index": index,
        "timestamp": at(seconds),
    }


def windows(
    lateness: float = 0, grace: float = 0, idle: float = 5, config: SeriesConfig = DEFAULT_SERIES
) -> EventTimeWindows:
    return EventTimeWindows(
        Watermark(lateness_s=lateness, idle_s=idle), grace_s=grace, series=SeriesResolver(config)
    )


def drain(w: EventTimeWindows, now: float) -> list[dict[str, Any]]:
    """The records of the windows closed at `now`, each checked against the record schema and
    its key (`series_id|granularity|window_start`)."""
    records = []
    for closed in w.close_ready(now, chunk=7):
        for key, value in closed.records:
            record = orjson.loads(value)
            WindowAggregate.model_validate(record)
            assert record["granularity"] == closed.granularity
            assert key.decode() == f"{record['series_id']}|{record['granularity']}|{record['window_start']}"
            records.append(record)
    return records


def by(closed: list[dict[str, Any]], granularity: str) -> list[dict[str, Any]]:
    return [c for c in closed if c["granularity"] == granularity]


def test_pane_closes_once_when_the_watermark_passes_its_end() -> None:
    w = windows()
    w.add_envelope(0, envelope(revenue(1, "9.99"), revenue(5, "0.01"), latency(9, 100.5)), 0)
    assert drain(w, 0) == []
    w.add_envelope(0, envelope(revenue(11, "5")), 0)
    panes = by(drain(w, 0), "10s")
    kinds = {c["type"]: c for c in panes}
    assert (kinds["revenue"]["count"], Decimal(kinds["revenue"]["sum"])) == (2, Decimal("10.00"))
    assert (kinds["revenue"]["min"], kinds["revenue"]["max"]) == ("0.01", "9.99")
    assert kinds["revenue"]["window_start"] == "2026-11-26T12:00:00Z"
    assert kinds["revenue"]["window_end"] == "2026-11-26T12:00:10Z"
    assert kinds["performance"]["dims"] == {"unit": "ms"}
    assert drain(w, 0) == []  # emitted once


def test_minutes_and_hours_are_merged_panes() -> None:
    w = windows()
    values = [10.0 + i for i in range(120)]  # two minutes, one event a second
    w.add_envelope(0, envelope(*(latency(i, v) for i, v in enumerate(values))), 0)
    w.add_envelope(0, envelope(latency(3600, 1.0)), 0)  # moves the watermark past the first hour
    closed = drain(w, 0)
    panes, minutes, [hour] = by(closed, "10s"), by(closed, "1m"), by(closed, "1h")
    assert len(panes) == 12 and len(minutes) == 2
    assert [m["count"] for m in minutes] == [60, 60]
    assert (
        sum(Decimal(p["sum"]) for p in panes)
        == sum(Decimal(m["sum"]) for m in minutes)
        == Decimal(hour["sum"])
    )
    assert (hour["count"], hour["min"], hour["max"], hour["mean"]) == (120, "10.0", "129.0", 69.5)
    assert abs(hour["p50"] - 69.0) <= 0.01 * 69.0
    assert abs(hour["p99"] - 128.0) <= 0.01 * 128.0
    assert sum(hour["sketch"]["positive"].values()) == 120


def test_revenue_sums_are_exact_per_currency() -> None:
    w = windows()
    w.add_envelope(0, envelope(*(revenue(i % 10, "0.10") for i in range(1000)), revenue(5, "100", "JPY")), 0)
    w.add_envelope(0, envelope(revenue(20, "1")), 0)
    closed = {c["currency"]: c for c in by(drain(w, 0), "10s")}
    assert Decimal(closed["USD"]["sum"]) == Decimal("100.00")
    assert closed["JPY"]["count"] == 1
    assert closed["USD"]["series_id"] != closed["JPY"]["series_id"]


def test_grace_keeps_a_pane_open_for_late_events_then_routes_later_ones() -> None:
    w = windows(lateness=0, grace=5)
    w.add_envelope(0, envelope(revenue(1, "1")), 0)
    w.add_envelope(0, envelope(revenue(14, "1")), 0)  # watermark 14 < 10 + 5: still open
    assert w.add_envelope(0, envelope(revenue(2, "2")), 0).late == []
    assert by(drain(w, 0), "10s") == []
    w.add_envelope(0, envelope(revenue(15, "1")), 0)  # watermark 15 >= 15: closes
    [closed] = by(drain(w, 0), "10s")
    assert (closed["count"], closed["sum"]) == (2, "3")
    late = w.add_envelope(0, envelope(revenue(3, "7")), 0).late
    assert [str(e.amount) for e, _ in late] == ["7"]  # type: ignore[union-attr]
    assert w.late_events == 1
    w.add_envelope(0, envelope(revenue(200, "1")), 0)
    [minute] = [c for c in by(drain(w, 0), "1m") if c["window_start"].endswith("12:00:00Z")]
    assert minute["count"] == 4  # the events at 1, 2, 14 and 15 s; the late one is in no granularity


def test_lateness_delays_the_watermark() -> None:
    wm = Watermark(lateness_s=5, idle_s=100)
    wm.observe(0, 1000.0, now=0)
    assert wm.advance(now=0) == 995.0


def test_watermark_is_the_slowest_partition_and_never_goes_back() -> None:
    wm = Watermark(lateness_s=0, idle_s=100)
    wm.observe(0, 100.0, now=0)
    wm.observe(1, 50.0, now=0)
    assert wm.advance(now=0) == 50.0
    wm.observe(1, 80.0, now=1)
    assert wm.advance(now=1) == 80.0
    wm.forget(1)
    assert wm.advance(now=1) == 100.0
    wm.observe(2, 10.0, now=1)  # a partition far behind does not move it back
    assert wm.advance(now=1) == 100.0


def test_idle_partition_follows_the_wall_clock() -> None:
    wm = Watermark(lateness_s=0, idle_s=5)
    wm.observe(0, 100.0, now=1000.0)
    assert wm.advance(now=1004.0) == 100.0  # not idle yet
    assert wm.advance(now=1010.0) == 110.0  # idle: event time moves on with wall time


def test_quiet_stream_closes_its_last_pane_by_idleness() -> None:
    w = windows(idle=2)
    w.add_envelope(0, envelope(revenue(8, "1")), now=5000.0)
    assert drain(w, 5001.0) == []
    assert len(by(drain(w, 5003.0), "10s")) == 1


def test_conversion_steps_carry_their_ratio_to_the_previous_step() -> None:
    w = windows()
    events = (
        [step(1, "paywall_viewed", 0)] * 10 + [step(2, "checkout_started", 1)] * 4 + [step(3, "paid", 2)] * 3
    )
    w.add_envelope(0, envelope(*events), 0)
    w.add_envelope(0, envelope(revenue(15, "1")), 0)
    steps = {c["name"]: c for c in by(drain(w, 0), "10s") if c["type"] == "conversion"}
    assert steps["checkout:paywall_viewed"].get("ratio_to_previous") is None
    assert steps["checkout:checkout_started"]["ratio_to_previous"] == 0.4
    assert steps["checkout:paid"]["ratio_to_previous"] == 0.75


def test_configured_tags_become_dimensions_with_a_cardinality_cap() -> None:
    config = SeriesConfig(rules=(DimensionRule(type="performance", tags=("route",)),), max_values=3)
    w = windows(config=config)
    routes = ["/a", "/b", "/c", "/d", "/e"]
    w.add_envelope(0, envelope(*(latency(1, 10.0, route=r, user="ignored") for r in routes)), 0)
    w.add_envelope(0, envelope(latency(11, 1.0)), 0)
    dims = sorted(c["dims"].get("route", "") for c in by(drain(w, 0), "10s"))
    assert dims == ["/a", "/b", "/c", OVERFLOW]


def test_series_id_is_stable_and_distinguishes_dims() -> None:
    a = series_id(("p", "feature", "share", "", (("action", "clicked"),)))
    b = series_id(("p", "feature", "share", "", (("action", "opened"),)))
    assert a == series_id(("p", "feature", "share", "", (("action", "clicked"),)))
    assert a != b and len(a) == 24


def test_a_restored_checkpoint_resumes_exactly() -> None:
    rng = random.Random(5)
    stream = [
        envelope(
            *(latency(t + rng.random(), rng.lognormvariate(5, 1), route=rng.choice("abc")) for _ in range(20))
        )
        for t in range(0, 300, 3)
    ] + [envelope(*(revenue(t, "1.5", rng.choice(["USD", "EUR"])) for t in range(0, 300, 7)))]
    whole, first = windows(grace=4), windows(grace=4)
    closed_whole, closed_split = [], []
    for i, env in enumerate(stream):
        whole.add_envelope(0, env, 0)
        closed_whole += drain(whole, 0)
        if i < 50:
            first.add_envelope(0, env, 0)
            closed_split += drain(first, 0)
    checkpoint = decode(encode(Checkpoint(50, first.to_state())))  # envelopes 0..49 are in it
    resumed = windows(grace=4)
    resumed.restore(checkpoint.state, 0)
    for env in stream[checkpoint.next_offset :]:
        resumed.add_envelope(0, env, 0)
        closed_split += drain(resumed, 0)
    assert closed_split == closed_whole
    assert len({(c["series_id"], c["granularity"], c["window_start"]) for c in closed_whole}) == len(
        closed_whole
    )


def test_performance_sums_are_the_exact_decimals_sent_even_past_nine_places() -> None:
    w = windows()
    values = [0.1, 0.2, 0.30000000000000004, 1e15, 123.456789012, 5e-10, -2.5, 7.0]
    w.add_envelope(0, envelope(*(latency(1, v) for v in values)), 0)
    w.add_envelope(0, envelope(latency(11, 1.0)), 0)
    [pane] = [c for c in by(drain(w, 0), "10s") if c["window_start"].endswith("12:00:00Z")]
    exact = sum(Decimal(repr(v)) for v in values)
    assert Decimal(pane["sum"]) == exact and "E" not in pane["sum"]
    assert pane["mean"] == float(exact) / len(values)
    assert (pane["min"], pane["max"]) == ("-2.5", "1000000000000000.0")


def test_a_window_builds_the_sketch_of_its_values_however_few() -> None:
    for values in ([250.0], [3.5, 900.0], [3.5, 900.0, 42.0], [0.0, -7.0]):
        w = windows()
        w.add_envelope(0, envelope(*(latency(i, v) for i, v in enumerate(values))), 0)
        w.add_envelope(0, envelope(latency(3600, 1.0)), 0)
        closed = [c for c in drain(w, 0) if c["window_start"] == "2026-11-26T12:00:00Z"]
        expected = DDSketch.of(*values)
        for record in closed:  # the pane, its minute and its hour
            assert DDSketch.from_wire(record["sketch"]) == expected, (values, record["granularity"])
            assert [record[p] for p in ("p50", "p90", "p95", "p99")] == expected.quantiles(
                (0.5, 0.9, 0.95, 0.99)
            )


def test_a_checkpoint_of_release_0_1_is_read_back() -> None:
    """Open windows as release 0.1 wrote them: one row per window, decimals as strings."""
    wire = {"accuracy": 0.01, "positive": {"232": 2}, "negative": {}, "zeros": 0}
    rows = [
        ["p", "performance", "api.latency", "", [["unit", "ms"]], START, [2, "201.0", 100.5, 100.5, wire]],
        ["p", "revenue", "sub", "USD", [], START, [1, "9.99", "9.99", "9.99", None]],
    ]
    old = {
        "windows": {"10s": rows, "1m": [], "1h": []},
        "watermark": {"current": None, "clocks": {"0": float(START + 5)}},
        "series": {"seen": [], "step_index": []},
        "late_events": 0,
    }
    w = windows()
    w.restore(old, 0)
    w.add_envelope(0, envelope(revenue(2, "0.01"), latency(11, 1.0)), 0)
    closed = {c["type"]: c for c in by(drain(w, 0), "10s") if c["window_start"].endswith("12:00:00Z")}
    assert (closed["performance"]["count"], closed["performance"]["sum"]) == (2, "201")
    assert sum(closed["performance"]["sketch"]["positive"].values()) == 2
    assert (closed["revenue"]["count"], closed["revenue"]["sum"], closed["revenue"]["min"]) == (
        2,
        "10",
        "0.01",
    )


def test_series_without_open_windows_are_forgotten_and_come_back_as_one(monkeypatch: Any) -> None:
    monkeypatch.setattr(streams.windows, "_MIN_SERIES_KEPT", 3)
    resolver = SeriesResolver(DEFAULT_SERIES)
    w = EventTimeWindows(Watermark(lateness_s=0, idle_s=5), grace_s=0, series=resolver)
    routes = [f"/r{i}" for i in range(6)]
    for hour in (0, 3600):
        w.add_envelope(0, envelope(*(latency(hour + t, 5.0, route=r) for r in routes for t in (1, 2))), 0)
        w.add_envelope(0, envelope(latency(hour + 3600, 1.0)), 0)  # closes the hour: its series go
        closed = [c for c in drain(w, 0) if c["window_start"] == at(hour).replace("+00:00", "Z")]
        assert len(resolver) == 1  # only the closer's series has an open window
        for granularity in ("10s", "1m", "1h"):
            records = [c for c in by(closed, granularity) if "route" in c["dims"]]  # not the closers
            assert sorted(c["dims"]["route"] for c in records) == routes
            assert all(c["count"] == 2 for c in records)
