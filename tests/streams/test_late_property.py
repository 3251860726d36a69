"""Property: whatever the arrival order, lateness and retries, the on-time windows plus the
corrections of the late events equal a direct recount of the first copy of every event, in every
granularity (the worker's windows and late records, and the sink's correction rows, without Kafka;
tests/streams/test_late.py proves the same through the real pipeline)."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.records import GRANULARITY_SECONDS, LateEvents
from schemas.series import DEFAULT_SERIES
from sinks.clickhouse.corrections import correction_rows
from streams.envelope import decode
from streams.late import late_record
from streams.series import SeriesResolver
from streams.watermark import Watermark
from streams.windows import EventTimeWindows

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
KINDS = ("performance", "revenue", "feature", "conversion")

Key = tuple[str, str, str, int]  # type, name, granularity, window start


def event(number: int, seconds: float) -> dict[str, Any]:
    """Event `number`: its content depends on its number only, as a retry's does."""
    common = {
        "event_id": f"e{number}",
        "timestamp": (T0 + timedelta(milliseconds=round(seconds * 1000))).isoformat(),
        "received_at": T0.isoformat(),
    }
    kind = KINDS[number % 4]
    if kind == "performance":
        return common | {"type": kind, "metric": "api.latency", "value": number * 1.25 - 7, "unit": "ms"}
    if kind == "revenue":
        return common | {"type": kind, "name": "sub", "amount": f"{number}.99", "currency": "USD"}
    if kind == "feature":
        return common | {"type": kind, "feature": "anime", "action": "applied"}
    return common | {"type": kind, "funnel": "onboarding", "step": f"s{number % 3}", "step_index": number % 3}


def series_name(item: dict[str, Any]) -> str:
    kind = item["type"]
    if kind == "conversion":
        return f"{item['funnel']}:{item['step']}"
    return str(item.get("name") or item.get("metric") or item.get("feature"))


def value(item: dict[str, Any]) -> Decimal:
    if item["type"] == "performance":
        return Decimal(repr(item["value"]))
    if item["type"] == "revenue":
        return Decimal(item["amount"])
    return Decimal(1)


sends = st.lists(
    st.tuples(
        st.integers(0, 40),  # which event (numbers repeat: retries)
        st.floats(-2.0, 2.0),  # the retry's timestamp moved by skew correction
        st.integers(1, 5),  # how many sends share a record
    ),
    min_size=1,
    max_size=120,
)
first_times = st.dictionaries(st.integers(0, 40), st.floats(0, 3 * 3600), min_size=41, max_size=41)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sends=sends, times=first_times, grace=st.sampled_from([0.0, 5.0, 25.0]))
def test_on_time_windows_plus_corrections_equal_a_recount(
    sends: list[tuple[int, float, int]], times: dict[int, float], grace: float
) -> None:
    windows = EventTimeWindows(
        Watermark(lateness_s=0, idle_s=10**9), grace_s=grace, series=SeriesResolver(DEFAULT_SERIES)
    )
    records: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    for number, jitter, share in sends:
        sent_at = times[number] + (
            jitter if any(e["event_id"] == f"e{number}" for r in records for e in r) else 0
        )
        current.append(event(number, max(sent_at, 0.0)))
        if len(current) >= share:
            records.append(current)
            current = []
    if current:
        records.append(current)
    closer = {"event_id": "closer", "type": "feature", "feature": "closer", "action": "x"}
    records.append([closer | {"timestamp": (T0 + timedelta(hours=6)).isoformat()}])

    first_copy: dict[str, tuple[int, dict[str, Any]]] = {}  # what metrics.events FINAL keeps
    for offset, items in enumerate(records):
        for item in items:
            first_copy.setdefault(item["event_id"], (offset, item))

    found: dict[Key, list[Decimal]] = defaultdict(lambda: [Decimal(0), Decimal(0)])
    for offset, items in enumerate(records):
        envelope = decode(orjson.dumps({"project": "p", "events": items}))
        folded = windows.add_envelope(0, envelope, 0.0, offset)
        assert folded.refused == []
        if folded.late:
            raw = late_record("p", 0, offset, 0.0, folded.late, windows.step_index)
            late = LateEvents.model_validate_json(raw)
            counted = {e.event_id for e in late.events if first_copy[e.event_id][0] == offset}
            rows, late_rows = correction_rows(late, counted)
            assert len(late_rows) == len(late.events)
            for row in map(orjson.loads, rows):
                start = int(datetime.fromtimestamp(row["window_start"], UTC).timestamp())
                total = found[(row["type"], row["name"], row["granularity"], start)]
                total[0] += row["count"]
                total[1] += Decimal(row["sum"])
        for closed in windows.close_ready(0.0):
            for _, raw_window in closed.records:
                window = orjson.loads(raw_window)
                start = int(datetime.fromisoformat(window["window_start"]).timestamp())
                total = found[(window["type"], window["name"], window["granularity"], start)]
                total[0] += window["count"]
                total[1] += Decimal(window["sum"])

    expected: dict[Key, list[Decimal]] = defaultdict(lambda: [Decimal(0), Decimal(0)])
    for _, item in first_copy.values():
        if item["event_id"] == "closer":
            continue
        seconds = datetime.fromisoformat(item["timestamp"]).timestamp()
        for granularity, size in GRANULARITY_SECONDS.items():
            total = expected[(item["type"], series_name(item), granularity, int(seconds // size) * size)]
            total[0] += 1
            total[1] += value(item)

    found = {key: total for key, total in found.items() if key[1] != "closer"}
    assert {key: tuple(total) for key, total in found.items()} == {
        key: tuple(total) for key, total in expected.items()
    }
