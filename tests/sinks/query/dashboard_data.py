"""Known events, late events and alerts for the dashboard tests, and the numbers each panel must
show, recomputed here in plain Python from what is posted (not from ClickHouse)."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal

from kafka import KafkaProducer

from schemas.records import AlertRecord
from tests.conftest import Pipeline, wait_for

REVENUE = [  # (minutes ago, second, user, amount, currency)
    (2, 10, "u1", "9.99", "USD"),
    (2, 20, "u2", "9.99", "USD"),
    (1, 15, "u1", "59.99", "USD"),
    (1, 25, "u3", "4.99", "EUR"),
    (2, 30, "u4", "1234.50", "EUR"),
    (1, 40, "u5", "1500", "JPY"),
]
FUNNELS = {  # funnel -> [(step, users)] in step order; "a9" posts as an anonymous id
    "onboarding": [
        ("app_opened", ["u1", "u2", "u3", "u4", "u1"]),
        ("signed_up", ["u1", "u2", "u3"]),
        ("photo_uploaded", ["u1", "u2"]),
        ("subscribed", ["u1"]),
    ],
    "checkout": [
        ("paywall_viewed", ["u1", "u2", "u3", "u4", "a9"]),
        ("checkout_started", ["u1", "u2"]),
        ("payment_succeeded", ["u1"]),
    ],
}
FEATURES = [  # (feature, action, users of each use)
    ("ai_effect.anime", "applied", ["u1", "u1", "u2", "u3", "u3"]),
    ("share", "clicked", ["u1", "u2"]),
    ("ai_effect.vintage", "previewed", ["u4"]),
]
LATENCIES = {  # (metric, unit) -> values
    ("api.latency", "ms"): [5.0 * i for i in range(1, 41)],
    ("ai.provider.latency", "ms"): [2450.5, 1200.25, 3100.0, 980.75],
    ("page.load", "s"): [1.25],
}
LATE = [  # (seconds old when posted, body): events posted after their windows closed
    (5 * 60, {"type": "feature", "feature": "share", "action": "clicked"}),
    (40 * 60, {"type": "performance", "metric": "page.load", "value": 3.5, "unit": "s"}),
    (26 * 3600, {"type": "revenue", "name": "subscription.started", "amount": "4.99", "currency": "EUR"}),
]


def minute(now: datetime, minutes_ago: int) -> datetime:
    return now.replace(second=0, microsecond=0) - timedelta(minutes=minutes_ago)


def known_events(now: datetime) -> list[dict[str, Any]]:
    """Events of the last three minutes, and one revenue event two hours old, which the
    last-hour panels must leave out."""
    events: list[dict[str, Any]] = []

    def add(ts: datetime, user: str, body: dict[str, Any]) -> None:
        who = {"anonymous_id": user} if user.startswith("a") else {"user_id": user}
        events.append({"event_id": f"dash-{len(events)}", "timestamp": ts.isoformat()} | who | body)

    for ago, second, user, amount, currency in REVENUE:
        body = {"type": "revenue", "name": "subscription.started", "amount": amount, "currency": currency}
        add(minute(now, ago) + timedelta(seconds=second), user, body)
    add(
        now - timedelta(hours=2), "u9", {"type": "revenue", "name": "old", "amount": "100", "currency": "USD"}
    )
    for funnel, steps in FUNNELS.items():
        for index, (step, users) in enumerate(steps):
            for n, user in enumerate(users):
                body = {"type": "conversion", "funnel": funnel, "step": step, "step_index": index}
                add(minute(now, 2) + timedelta(seconds=index * 10 + n), user, body)
    for feature, action, users in FEATURES:
        for n, user in enumerate(users):
            body = {"type": "feature", "feature": feature, "action": action}
            add(minute(now, 1) + timedelta(seconds=n), user, body)
    for (metric, unit), values in LATENCIES.items():
        for n, value in enumerate(values):
            body = {"type": "performance", "metric": metric, "value": value, "unit": unit}
            add(minute(now, 1) + timedelta(seconds=n % 60), "u1", body)
    return events


def late_events(now: datetime) -> list[dict[str, Any]]:
    """The events of LATE, stamped that long before `now`."""
    return [
        {
            "event_id": f"dash-late-{n}",
            "timestamp": (now - timedelta(seconds=age)).isoformat(),
            "user_id": "u7",
        }
        | body
        for n, (age, body) in enumerate(LATE)
    ]


@dataclass(frozen=True, eq=False)
class Within:
    """Equal to any number from `low` to `high`: a cell known only within bounds."""

    low: float
    high: float

    def __eq__(self, other: object) -> bool:
        return isinstance(other, int | float) and self.low <= other <= self.high

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class Traffic:
    """What `post_traffic` sent: every event, the time known_events were stamped from, and when
    the late events were posted."""

    now: datetime
    events: list[dict[str, Any]]
    late: list[dict[str, Any]]
    late_posted: datetime
    retry_late: bool  # the client retry reached the worker after its window closed: a late copy


def post_traffic(pipeline: Pipeline) -> Traffic:
    """known_events through the ingest (in event-time order, so the worker takes every one on
    time, and one retried), then, once the worker has emitted windows, the LATE events, which it
    finds too late for their windows. Returns when every event and late event is stored."""
    now = datetime.now(UTC)
    events = known_events(now)
    pipeline.post(sorted(events, key=lambda e: datetime.fromisoformat(e["timestamp"])))
    pipeline.post(events[:1])  # a client retry: the same event_id counts once
    wait_rows(pipeline, "events", len(events))
    emitted = wait_for(lambda: pipeline.query("SELECT count() FROM metrics.aggregates")[0][0], timeout=60)
    assert emitted, pipeline.log("streams")
    late_posted = datetime.now(UTC)
    late = late_events(late_posted)
    pipeline.post(late)
    wait_rows(pipeline, "events", len(events) + len(late))
    # Worker -> late topic -> sink: seconds on a quiet machine, more beside other pipelines. The
    # retry came before the late events in the same partition, so its late copy, if the worker
    # folded it after its window closed (a busy machine), is stored by then too.
    ids = ", ".join(f"'{event['event_id']}'" for event in late)
    landed = f"SELECT count() FROM metrics.late_events FINAL WHERE event_id IN ({ids})"  # noqa: S608
    assert wait_for(lambda: pipeline.query(landed) == [[len(late)]], timeout=150), pipeline.log("streams")
    retry = f"SELECT count() FROM metrics.late_events FINAL WHERE event_id = '{events[0]['event_id']}'"  # noqa: S608
    return Traffic(now, events + late, late, late_posted, retry_late=pipeline.query(retry) == [[1]])


def late_rows(traffic: Traffic, checked: datetime, project: str) -> list[list[Any]]:
    """The late-events panel: every late event counted, beside the retry's late copy (not
    counted) when there is one; a delay is the time the worker read the event (after the post,
    before `checked`) minus its event time, so known within bounds. The copy's delay (minutes)
    is below the p50 of the late events' either way."""
    ages = sorted(age for age, _ in LATE)
    slack = (checked - traffic.late_posted).total_seconds()

    def delay(age: float) -> Within:
        return Within(age - 0.01, age + slack + 0.01)

    p50 = ages[math.floor(0.5 * len(ages))]
    rows = len(ages) + traffic.retry_late
    return [[project, rows, len(ages), round(len(ages) / rows, 4), delay(p50), delay(ages[-1])]]


def format_delay(seconds: float) -> str:
    """A delay as the embedded page prints it (dashboard.js formatDelay, toFixed's rounding)."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{Decimal(seconds / size).quantize(Decimal('0.1'), ROUND_HALF_UP)} {unit}"
    return f"{Decimal(seconds).quantize(Decimal('0.1'), ROUND_HALF_UP)} s"


def alert_records(now: datetime, project: str) -> list[AlertRecord]:
    """Two alerts firing now, and one that fired and resolved."""
    now = now.replace(microsecond=now.microsecond // 1000 * 1000)  # DateTime64(3) keeps milliseconds

    def alert(
        fingerprint: str,
        rule: str,
        severity: Literal["warning", "critical"],
        state: Literal["firing", "resolved"],
        value: float,
        threshold: float,
        started_ago: int,
        evaluated_ago: int,
        summary: str,
        **labels: str,
    ) -> AlertRecord:
        starts_at = now - timedelta(minutes=started_ago)
        return AlertRecord(
            fingerprint=fingerprint,
            rule=rule,
            state=state,
            severity=severity,
            labels={"alertname": rule, "project": project, "severity": severity} | labels,
            annotations={"summary": summary},
            value=value,
            threshold=threshold,
            starts_at=starts_at,
            ends_at=now - timedelta(minutes=evaluated_ago) if state == "resolved" else None,
            evaluated_at=now - timedelta(minutes=evaluated_ago),
            emitted_at=now,
        )

    return [
        alert("a1", "payment_failures", "critical", "firing", 4, 3, 3, 3, "4 payment failures in 5m"),
        alert(
            "a2",
            "ai_provider_failures",
            "warning",
            "firing",
            25,
            20,
            5,
            5,
            "25 AI failures",
            provider="replicate",
        ),
        alert("a3", "api_error_rate", "warning", "firing", 0.08, 0.05, 9, 9, "API error rate 8.0%"),
        alert("a3", "api_error_rate", "warning", "resolved", 0.01, 0.05, 9, 4, "API error rate 8.0%"),
    ]


def produce_alerts(bootstrap: str, topic: str, alerts: list[AlertRecord]) -> None:
    """Alert state changes on the alerts topic, as the streams worker produces them."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for record in alerts:
            producer.send(topic, key=record.fingerprint.encode(), value=record.model_dump_json().encode())
        producer.flush(timeout=30)
    finally:
        producer.close()


def wait_rows(pipeline: Pipeline, table: str, count: int, timeout: float = 90) -> None:
    def landed() -> bool:
        return pipeline.query(f"SELECT count() FROM metrics.{table} FINAL")[0][0] == count  # noqa: S608

    assert wait_for(landed, timeout=timeout), pipeline.log("sink") + pipeline.log("streams")


def expected_panels(
    now: datetime,
    events: list[dict[str, Any]],
    alerts: list[AlertRecord],
    late: list[list[Any]] | None = None,
) -> dict[str, Any]:
    """Panel key -> the rows its query must return (decimals as Decimal, times as naive UTC
    datetimes, delays `Within` bounds); compare with `normalize`d rows of the query service.
    `late` is the late-events panel (`late_rows`)."""
    start = now - timedelta(hours=1)
    unique = {e["event_id"]: e for e in events}.values()
    recent = [e for e in unique if datetime.fromisoformat(e["timestamp"]) >= start]

    def who(e: dict[str, Any]) -> str:
        return str(e.get("user_id") or e["anonymous_id"])

    revenue: dict[str, list[Any]] = defaultdict(lambda: [Decimal(0), 0, set()])
    per_minute: dict[tuple[datetime, str], Decimal] = defaultdict(Decimal)
    for e in (e for e in recent if e["type"] == "revenue"):
        total = revenue[e["currency"]]
        total[0] += Decimal(e["amount"])
        total[1] += 1
        total[2].add(who(e))
        at = datetime.fromisoformat(e["timestamp"]).replace(second=0, microsecond=0, tzinfo=None)
        per_minute[(at, e["currency"])] += Decimal(e["amount"])

    funnels = []
    for funnel in sorted(FUNNELS):
        users = [
            len(
                {
                    who(e)
                    for e in recent
                    if e["type"] == "conversion" and e["funnel"] == funnel and e["step"] == s
                }
            )
            for s, _ in FUNNELS[funnel]
        ]
        for index, ((step, _), n) in enumerate(zip(FUNNELS[funnel], users, strict=True)):
            previous = users[index - 1] if index else n
            funnels.append([funnel, step, index, n, round(n / users[0], 4), round(n / previous, 4)])

    features = []
    for feature, action, _ in FEATURES:
        uses = [
            e for e in recent if e["type"] == "feature" and (e["feature"], e["action"]) == (feature, action)
        ]
        features.append([feature, action, len(uses), len({who(e) for e in uses})])
    features.sort(key=lambda row: (-row[2], row[0], row[1]))

    latency = []
    for metric, unit in sorted(LATENCIES):
        values = sorted(e["value"] for e in recent if e["type"] == "performance" and e["metric"] == metric)
        rank = min(math.floor(0.95 * len(values)), len(values) - 1)
        latency.append([metric, unit, len(values), values[rank], values[-1]])

    return {
        "revenue_by_currency": [[c, t[0], t[1], len(t[2])] for c, t in sorted(revenue.items())],
        "revenue_per_minute": [[m, c, amount] for (m, c), amount in sorted(per_minute.items())],
        "funnels": funnels,
        "top_features": features,
        "latency_p95": latency,
        "alerts_firing": firing_rows(alerts),
        "late_events": late or [],
        "alerting": alerting_rows(alerts, hours=1),
    }


def alerting_rows(alerts: list[AlertRecord], hours: int) -> list[list[Any]]:
    """The alerting panel's rows for alert records only (no deliveries, no acknowledgements), all
    of them starting within the `hours` of the time range: per rule, then `(all)`."""
    ordered = sorted(alerts, key=lambda a: (a.fingerprint, a.starts_at, a.state))
    previous_end = {}  # (fingerprint, starts_at) of a firing record -> the record before's ends_at
    for before, record in zip([None, *ordered], ordered, strict=False):
        if before is not None and before.fingerprint == record.fingerprint:
            previous_end[(record.fingerprint, record.starts_at)] = before.ends_at

    def row(rule: str, records: list[AlertRecord]) -> list[Any]:
        fired = [a for a in records if a.state == "firing"]
        resolved = [a for a in records if a.state == "resolved"]
        detect = [max(0.0, (a.emitted_at - a.evaluated_at).total_seconds()) for a in fired]
        mttr = [(a.ends_at - a.starts_at).total_seconds() for a in resolved if a.ends_at is not None]
        flapping = sum(
            1
            for a in fired
            if (end := previous_end.get((a.fingerprint, a.starts_at))) is not None
            and (a.starts_at - end).total_seconds() <= 600
        )
        return [
            rule, len(fired), round(len(fired) * 24 / hours, 2), 10, 0, 0, None, 99.9,
            round(sum(detect) / len(detect), 3) if detect else None, len(resolved),
            round(sum(mttr) / len(mttr), 1) if mttr else None, 300, flapping, 0, 0.0, 2,
        ]  # fmt: skip

    if not alerts:
        return []  # nothing in the range: not even the (all) row
    rules = sorted({a.rule for a in alerts})
    return [*(row(rule, [a for a in alerts if a.rule == rule]) for rule in rules), row("(all)", alerts)]


def firing_rows(alerts: list[AlertRecord]) -> list[list[Any]]:
    """The alerts whose newest state is firing, critical first, then the most recent."""
    newest = {}
    for record in sorted(alerts, key=lambda a: (a.evaluated_at, a.state)):
        newest[record.fingerprint] = record
    firing = sorted(
        (a for a in newest.values() if a.state == "firing"),
        key=lambda a: (a.severity != "critical", -a.starts_at.timestamp(), a.rule),
    )
    return [
        [a.fingerprint, a.rule, a.severity, a.labels["project"], a.annotations["summary"], a.value]
        + [a.threshold, a.starts_at.replace(tzinfo=None), a.labels]
        for a in firing
    ]


def normalize(rows: list[list[Any]], expected: list[list[Any]]) -> list[list[Any]]:
    """Rows of the query service (JSON) in the types of `expected`'s cells, floats equal to the
    expected ones within 1e-9 taken as equal."""

    def cell(value: Any, like: Any) -> Any:
        if isinstance(like, Decimal):
            return Decimal(str(value))
        if isinstance(like, datetime):
            return datetime.fromisoformat(str(value))
        if isinstance(like, float) and isinstance(value, int | float) and math.isclose(value, like):
            return like
        return value

    if len(rows) != len(expected):
        return rows
    return [
        [cell(v, e) for v, e in zip(row, want, strict=False)]
        for row, want in zip(rows, expected, strict=True)
    ]


def dump(rows: Any) -> str:
    return json.dumps(rows, default=str, indent=1)


def now_utc() -> datetime:
    return datetime.now(UTC)
