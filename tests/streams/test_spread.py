"""One project spread over the partitions (`COSNAP_EVENTS_KEY=series`): one, two and three
workers on its events, a third of them posted twice (client retries), give every window the
offline recomputation from metrics.events gives, row by row with its dimensions, and the same
alerts: of a rule whose events lie in one series key (the same fingerprints, each firing once
and resolved once) and of a rule whose groups span the partitions, evaluated on their merged
panes (each group firing once and resolving once, in the panes the posted events decide)
(real Kafka, real chDB)."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from schemas.records import alert_fingerprint as fingerprint
from tests.conftest import Pipeline, wait_for
from tests.recount import DIMENSION, MINUTE, SERIES, VALUE, WINDOW_DIMENSION

pytestmark = [pytest.mark.kafka, pytest.mark.e2e]

TOTAL = 24_000
BATCH = 500
METRICS = [f"m{n}.latency" for n in range(10)]
ROUTES = ["/a", "/b"]
BURST_AT_S = 150  # the burst of failures, seconds after the start
BURST = 80  # failures of m0.latency, and as many of the other metrics, half of each per route
RULE: dict[str, Any] = {
    "name": "m0_failures",
    "match": {"type": "performance", "metric": "m0.latency", "tags": {"status": "failed"}},
    "aggregate": "count",
    "window": "30s",
    "op": ">=",
    "threshold": 20,
    "group_by": ["route"],
    "severity": "high",
    "annotations": {"summary": "{value:.0f} failures"},
}
# Failures of every metric: 40 of m0.latency per route would not fire it, 80 of all metrics do.
SPANNING = RULE | {
    "name": "all_failures",
    "match": {"type": "performance", "tags": {"status": "failed"}},
    "threshold": 60,
}

# Every window of the events, from metrics.events (first copies), with its dimensions: unit,
# action, currency, and the performance tags that are default dimensions (route, status).
RECOMPUTE = f"""
SELECT type, {SERIES} AS series, currency, {DIMENSION} AS dim, tags['route'], tags['status'],
       {MINUTE} AS minute, count(), toString(sum({VALUE}))
FROM metrics.events FINAL
GROUP BY type, series, currency, dim, tags['route'], tags['status'], minute
"""  # noqa: S608 - constants
WINDOWS = f"""
SELECT type, name, currency, {WINDOW_DIMENSION}, dims['route'], dims['status'],
       formatDateTime(window_start, '%Y-%m-%dT%H:%i:%S'), count, toString(sum)
FROM metrics.windows
WHERE granularity = '1m'
"""  # noqa: S608 - constants


def make_events(start: datetime, rng: random.Random) -> list[dict[str, Any]]:
    """One project's mix over 4 minutes: 10 metrics, 3 features, 2 funnels of 3 steps, 2 revenue
    names in 2 currencies; and a burst of failures within 10 s, per route 40 of m0.latency and
    40 of the other metrics."""
    events: list[dict[str, Any]] = []
    for i in range(TOTAL - 2 * BURST):
        common = {
            "event_id": f"s{i}",
            "timestamp": (start + timedelta(milliseconds=rng.randrange(240_000))).isoformat(),
            "user_id": f"u{i % 300}",
        }
        kind = rng.random()
        if kind < 0.6:
            value = round(rng.lognormvariate(5, 0.8), 2)
            tags = {"route": rng.choice(ROUTES), "status": "ok"}
            event = {"type": "performance", "metric": rng.choice(METRICS), "value": value, "unit": "ms"}
            events.append(common | event | {"tags": tags})
        elif kind < 0.8:
            events.append(common | {"type": "feature", "feature": f"f{rng.randrange(3)}", "action": "used"})
        elif kind < 0.9:
            funnel, step = rng.choice(["checkout", "onboarding"]), rng.choice(["a", "b", "c"])
            events.append(common | {"type": "conversion", "funnel": funnel, "step": step})
        else:
            amount, currency = rng.choice(["9.99", "59.99"]), rng.choice(["USD", "EUR"])
            name = rng.choice(["renewal", "purchase"])
            events.append(common | {"type": "revenue", "name": name, "amount": amount, "currency": currency})
    for n in range(2 * BURST):
        ts = start + timedelta(seconds=BURST_AT_S, milliseconds=rng.randrange(10_000))
        tags = {"route": ROUTES[n % 2], "status": "failed"}
        metric = "m0.latency" if n < BURST else METRICS[1 + n % (len(METRICS) - 1)]
        event = {"type": "performance", "metric": metric, "value": 900.0, "unit": "ms", "tags": tags}
        events.append(event | {"event_id": f"burst{n}", "timestamp": ts.isoformat(), "user_id": f"u{n}"})
    return sorted(events, key=lambda e: e["timestamp"])


def spanning_alerts(events: list[dict[str, Any]]) -> list[list[object]]:
    """[route, state, evaluated pane] of the spanning count rule, from the events alone: it fires
    in the pane of the 60th failure of the route (the burst is shorter than the window) and
    resolves in the first pane whose window (that pane and the 3 before it) holds fewer than 60."""
    out: list[list[object]] = []
    for route in ROUTES:
        panes = [
            datetime.fromisoformat(e["timestamp"]).timestamp() // 10 * 10
            for e in events
            if e.get("tags") == {"route": route, "status": "failed"}
        ]
        fired = panes[SPANNING["threshold"] - 1]
        resolved = next(
            pane
            for pane in range(int(fired) + 10, int(fired) + 600, 10)
            if sum(pane - 30 <= p <= pane for p in panes) < SPANNING["threshold"]
        )
        out += [[route, "firing", int(fired)], [route, "resolved", resolved]]
    return out


def rules_file(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"rules": [RULE, SPANNING]}))
    return path


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_one_projects_windows_and_alerts_do_not_depend_on_how_many_workers_fold_it(
    pipeline: Pipeline, tmp_path: Path, workers: int
) -> None:
    pipeline.env |= {
        "COSNAP_EVENTS_KEY": "series",
        "COSNAP_RULES_FILE": str(rules_file(tmp_path)),
        "COSNAP_WINDOW_LATENESS_S": "0",
        "COSNAP_WINDOW_GRACE_S": "2",
        "COSNAP_WATERMARK_IDLE_S": "2",
        "COSNAP_RATE_LIMIT_EVENTS_PER_S": "0",
    }
    names = ["streams", *(f"streams#{n}" for n in range(2, workers + 1))]
    pipeline.start("sink", *names, "ingest")
    assert wait_for(lambda: all("[^Worker]: Ready" in pipeline.log(w) for w in names), timeout=120)
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=6)
    rng = random.Random(workers)
    events = make_events(start, random.Random(7))
    with httpx.Client(
        base_url=pipeline.ingest_url, headers={"Authorization": f"Bearer {pipeline.write_key}"}, timeout=60
    ) as client:
        for first in range(0, len(events), BATCH):
            batch = {"events": events[first : first + BATCH]}
            for _ in range(2 if rng.random() < 1 / 3 else 1):  # a third of the batches retried
                response = client.post("/v1/events", json=batch)
                assert response.status_code == 202, response.text

    def one_minute_total() -> object:
        return pipeline.query("SELECT sum(count) FROM metrics.aggregates FINAL WHERE granularity = '1m'")

    assert wait_for(lambda: one_minute_total() == [[TOTAL]], timeout=240, interval=1), (
        one_minute_total(),
        [pipeline.log(w)[-2000:] for w in names],
    )
    assert pipeline.query("SELECT count() FROM metrics.events FINAL") == [[TOTAL]]
    assert pipeline.query("SELECT uniqExact(kafka_partition) >= 3 FROM metrics.events FINAL") == [[1]]
    windows, recomputed = pipeline.query(WINDOWS), pipeline.query(RECOMPUTE)
    assert sorted(map(str, windows)) == sorted(map(str, recomputed))  # row by row, every dimension

    logs = [(pipeline.logs / f"{w}.log").read_text(errors="replace") for w in names]  # whole
    owned = [set(re.findall(r"owns events partition (\d+)", log)) for log in logs]
    assert all(owned), owned  # every worker folded part of the one project
    if workers > 1:
        assert not set.intersection(*owned), owned

    # The burst fires once per route and resolves once, whichever worker owns m0.latency's partition.
    def alerts() -> list[list[object]]:
        return pipeline.query(
            "SELECT labels['route'], state, count() FROM metrics.alerts FINAL"
            " WHERE rule = 'm0_failures' GROUP BY labels['route'], state ORDER BY labels['route'], state"
        )

    expected = [[route, state, 1] for route in ROUTES for state in ("firing", "resolved")]
    assert wait_for(lambda: alerts() == expected, timeout=120, interval=1), alerts()
    fingerprints = pipeline.query(
        "SELECT DISTINCT fingerprint FROM metrics.alerts FINAL WHERE rule = 'm0_failures'"
    )
    labels: dict[str, str] = {"alertname": RULE["name"], "severity": "high", "project": "cosnap-test"}
    assert sorted(map(str, fingerprints)) == sorted(str([fingerprint(labels | {"route": r})]) for r in ROUTES)

    # The rule spanning the partitions, evaluated on every partition's part of its panes: once
    # per route each way, in the panes the events decide, whichever workers folded them.
    def merged() -> list[list[object]]:
        return pipeline.query(
            "SELECT labels['route'], state,"
            " toUnixTimestamp(toStartOfInterval(evaluated_at, INTERVAL 10 SECOND)) FROM metrics.alerts FINAL"
            " WHERE rule = 'all_failures' ORDER BY labels['route'], state"
        )

    expected_merged = spanning_alerts(events)
    assert wait_for(lambda: merged() == expected_merged, timeout=120, interval=1), (merged(), expected_merged)
