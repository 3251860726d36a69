"""End to end on real Apache Kafka and chDB: HTTP in, rows in ClickHouse out."""

from __future__ import annotations

import re
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Pipeline, wait_for

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.kafka, pytest.mark.e2e]

REVENUE = [
    ("subscription.renewal", "9.99", "USD"),
    ("credits.purchase", "4.99", "EUR"),
    ("subscription.started", "1500", "JPY"),
]
FUNNEL = ["app_opened", "signed_up", "photo_uploaded", "subscribed"]
FEATURES = [("ai_effect.anime", "applied"), ("ai_effect.vintage", "previewed"), ("share", "clicked")]
METRICS = [("api.latency", "ms"), ("ai.provider.latency", "ms"), ("page.load", "s")]


def known_events(n: int, windows: list[datetime]) -> list[dict[str, Any]]:
    """`n` events across the four types and the given one-minute windows, with known values."""
    events = []
    for i in range(n):
        ts = windows[i % len(windows)] + timedelta(seconds=(i * 7) % 60, milliseconds=i % 1000)
        common = {"event_id": f"e2e-{uuid.uuid4().hex}", "timestamp": ts.isoformat(), "user_id": f"u{i % 37}"}
        kind = i % 4
        if kind == 0:
            name, amount, currency = REVENUE[i % len(REVENUE)]
            events.append(common | {"type": "revenue", "name": name, "amount": amount, "currency": currency})
        elif kind == 1:
            events.append(
                common | {"type": "conversion", "funnel": "onboarding", "step": FUNNEL[i % len(FUNNEL)]}
            )
        elif kind == 2:
            feature, action = FEATURES[i % len(FEATURES)]
            events.append(common | {"type": "feature", "feature": feature, "action": action})
        else:
            metric, unit = METRICS[i % len(METRICS)]
            value = (i % 50) * 1.5 + 0.25
            events.append(common | {"type": "performance", "metric": metric, "value": value, "unit": unit})
    return sorted(events, key=lambda e: e["timestamp"])


WindowKey = tuple[str, str, str, tuple[tuple[str, str], ...], str]


def expected_windows(events: list[dict[str, Any]]) -> dict[WindowKey, tuple[int, Decimal]]:
    """(type, name, currency, dims, window_start) -> (count, sum), computed independently."""
    out: dict[WindowKey, list[Any]] = defaultdict(lambda: [0, Decimal(0)])
    for e in events:
        ts = datetime.fromisoformat(e["timestamp"])
        start = ts.replace(second=0, microsecond=0).strftime("%Y-%m-%dT%H:%M:%S")
        if e["type"] == "revenue":
            key, value = ("revenue", e["name"], e["currency"], ()), Decimal(e["amount"])
        elif e["type"] == "conversion":
            key, value = ("conversion", f"{e['funnel']}:{e['step']}", "", ()), Decimal(1)
        elif e["type"] == "feature":
            key, value = ("feature", e["feature"], "", (("action", e["action"]),)), Decimal(1)
        else:
            key, value = ("performance", e["metric"], "", (("unit", e["unit"]),)), Decimal(repr(e["value"]))
        acc = out[(*key, start)]
        acc[0] += 1
        acc[1] += value
    return {k: (v[0], v[1]) for k, v in out.items()}


def test_thousand_events_reach_events_and_aggregates(pipeline: Pipeline) -> None:
    pipeline.start("sink", "streams", "ingest")
    minute = datetime.now(UTC).replace(second=0, microsecond=0)
    windows = [minute - timedelta(minutes=m) for m in (4, 3, 2)]
    events = known_events(1000, windows)

    pipeline.post(events)

    def events_landed() -> bool:
        return pipeline.query("SELECT count() FROM metrics.events")[0][0] == 1000

    assert wait_for(events_landed, timeout=30), pipeline.log("sink")
    total, unique = pipeline.query("SELECT count(), uniqExact(event_id) FROM metrics.events FINAL")[0]
    assert (total, unique) == (1000, 1000)
    revenue = pipeline.query(
        "SELECT currency, toString(sum(amount)) FROM metrics.events WHERE type = 'revenue' GROUP BY currency"
    )
    expected_revenue: dict[str, Decimal] = defaultdict(Decimal)
    for e in events:
        if e["type"] == "revenue":
            expected_revenue[e["currency"]] += Decimal(e["amount"])
    assert {c: Decimal(s) for c, s in revenue} == expected_revenue

    expected = expected_windows(events)

    def aggregates() -> dict[WindowKey, tuple[int, Decimal]]:
        rows = pipeline.query(
            "SELECT type, name, currency, dims, formatDateTime(window_start, '%Y-%m-%dT%H:%i:%S'),"
            " count, toString(sum) FROM metrics.windows WHERE granularity = '1m'"
        )
        found = {}
        for kind, name, currency, dims, start, count, total in rows:
            assert isinstance(dims, dict)
            key = (str(kind), str(name), str(currency), tuple(sorted(dims.items())), str(start))
            found[key] = (int(str(count)), Decimal(str(total)))
        return found

    found = wait_for(lambda: len(aggregates()) >= len(expected), timeout=60) and aggregates()
    assert found == expected
    assert sum(count for count, _ in found.values()) == 1000

    # Panes hold the same events as the minutes, and performance windows carry quantiles
    # within the sketch's 1 % of the exact ones computed from the posted values.
    assert wait_for(
        lambda: (
            pipeline.query("SELECT sum(count) FROM metrics.aggregates FINAL WHERE granularity = '10s'")
            == [[1000]]
        ),
        timeout=30,
    )
    rows = pipeline.query(
        "SELECT name, formatDateTime(window_start, '%Y-%m-%dT%H:%i:%S'), count, p50, p99,"
        " arraySum(mapValues(sketch_positive)) FROM metrics.windows"
        " WHERE type = 'performance' AND granularity = '1m'"
    )
    assert rows
    for name, start, count, p50, p99, binned in rows:
        values = sorted(
            e["value"]
            for e in events
            if e["type"] == "performance"
            and e["metric"] == name
            and e["timestamp"].startswith(str(start)[:16])
        )
        assert count == binned == len(values)
        for estimate, q in ((p50, 0.5), (p99, 0.99)):
            truth = values[int(q * (len(values) - 1))]
            assert abs(float(str(estimate)) - truth) <= 0.01 * truth


def documented_queries() -> list[str]:
    """Every statement of every ```sql block in the README and the reference docs."""
    statements = []
    for doc in (ROOT / "README.md", ROOT / "docs" / "reference.md"):
        for block in re.findall(r"```sql\n(.*?)```", doc.read_text(), re.DOTALL):
            statements.extend(s.strip() for s in block.split(";") if s.strip())
    return statements


def test_documented_queries_run(pipeline: Pipeline) -> None:
    pipeline.start("sink", "ingest")
    minute = datetime.now(UTC).replace(second=0, microsecond=0)
    events = known_events(200, [minute - timedelta(minutes=2)])
    events.append(
        {
            "type": "performance",
            "metric": "payment.latency",
            "value": 800.0,
            "unit": "ms",
            "tags": {"status": "failed"},
        }
    )
    response = httpx.post(
        f"{pipeline.ingest_url}/v1/events",
        headers={"Authorization": f"Bearer {pipeline.write_key}"},
        json={"events": events},
    )
    assert response.status_code == 202
    assert wait_for(lambda: pipeline.query("SELECT count() FROM metrics.events")[0][0] == 201, timeout=30)
    queries = documented_queries()
    assert len(queries) >= 8
    for sql in queries:
        pipeline.query(sql)  # asserts a 200 from the read-only query service
