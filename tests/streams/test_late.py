"""Late events and retries through the real pipeline (ingest, Kafka, worker, sink, chDB): events
3 minutes to 29 days late count exactly once in every granularity of `metrics.windows`, also
across a kill -9 of the worker and of the sink while late batches flow; a retried event counts
once in every window and in the alert rules."""

from __future__ import annotations

import random
import re
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest
from confluent_kafka import Producer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import AlertListener, Pipeline, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.e2e]

GRANULARITIES = {"10s": 10, "1m": 60, "1h": 3600}
LATENESS = [
    timedelta(minutes=3),
    timedelta(minutes=40),
    timedelta(hours=5),
    timedelta(hours=26),
    timedelta(days=29),
]

EXPECTED = """
SELECT type,
       multiIf(type = 'revenue', name, type = 'performance', metric, type = 'feature', feature,
               concat(funnel, ':', step)) AS series,
       currency, toUnixTimestamp(toStartOfInterval(timestamp, INTERVAL {size} SECOND)) AS start,
       count(),
       toString(sum(multiIf(type = 'revenue', toDecimal128(amount, 9),
                            type = 'performance', toDecimal128(toString(value), 9), toDecimal128(1, 9))))
FROM metrics.events FINAL
WHERE series != 'closer' AND start + {size} <= {cutoff}
GROUP BY type, series, currency, start
"""
FOUND = """
SELECT type, name, currency, toUnixTimestamp(window_start) AS start, sum(count), toString(sum(sum))
FROM metrics.windows
WHERE granularity = '{granularity}' AND name != 'closer' AND start + {size} <= {cutoff}
GROUP BY type, name, currency, start
"""

STORED_TOTALS = """
SELECT count(), toString(sum(toDecimal128(toString(value), 9)))
FROM metrics.events FINAL WHERE metric = '{metric}'
"""
WINDOW_TOTALS = """
SELECT sum(count), toString(sum(sum)) FROM metrics.windows WHERE granularity = '10s' AND name = '{metric}'
"""


def make_event(number: int, at: datetime, rng: random.Random) -> dict[str, Any]:
    common = {
        "event_id": f"late-{number}-{uuid.uuid4().hex[:6]}",
        "timestamp": at.isoformat(),
        "user_id": f"u{number % 50}",
    }
    kind = number % 4
    if kind == 0:
        value = round(rng.lognormvariate(5, 0.8), 3)
        return common | {"type": "performance", "metric": "api.latency", "value": value, "unit": "ms"}
    if kind == 1:
        amount = rng.choice(["9.99", "59.99", "0.01"])
        return common | {
            "type": "revenue",
            "name": "subscription.renewal",
            "amount": amount,
            "currency": "USD",
        }
    if kind == 2:
        return common | {"type": "feature", "feature": "ai_effect.anime", "action": "applied"}
    return common | {"type": "conversion", "funnel": "onboarding", "step": rng.choice(["a", "b"])}


def mismatches(pipeline: Pipeline, cutoff: int) -> dict[str, dict[tuple[str, ...], Any]]:
    """Per granularity, the windows ending by `cutoff` whose (count, sum) in metrics.windows
    differ from a recount of metrics.events FINAL: key -> (found, expected)."""
    out: dict[str, dict[tuple[str, ...], Any]] = {}
    for granularity, size in GRANULARITIES.items():

        def rows(sql: str) -> dict[tuple[str, ...], tuple[int, Decimal]]:
            return {
                tuple(str(c) for c in row[:4]): (int(str(row[4])), Decimal(str(row[5])))
                for row in pipeline.query(sql)
            }

        expected = rows(EXPECTED.format(size=size, cutoff=cutoff))
        found = rows(FOUND.format(granularity=granularity, size=size, cutoff=cutoff))
        wrong = {
            key: (found.get(key), expected.get(key))
            for key in expected.keys() | found.keys()
            if found.get(key) != expected.get(key)
        }
        if wrong:
            out[granularity] = wrong
    return out


def reconciled(pipeline: Pipeline, cutoff: int) -> subprocess.CompletedProcess[str]:
    """`cosnap-metrics reconcile` as an operator runs it, over the windows ending by `cutoff`."""
    to = datetime.fromtimestamp(cutoff, UTC).isoformat()
    command = [sys.executable, "-m", "cosnap_metrics.cli", "reconcile", "--from", "31d", "--to", to]
    return subprocess.run(command, env=pipeline.env, capture_output=True, text=True, timeout=120, check=False)


def client_for(pipeline: Pipeline) -> httpx.Client:
    headers = {"Authorization": f"Bearer {pipeline.write_key}"}
    return httpx.Client(base_url=pipeline.ingest_url, headers=headers, timeout=60)


def post(client: httpx.Client, events: list[dict[str, Any]], **body: Any) -> None:
    for first in range(0, len(events), 500):
        response = client.post("/v1/events", json={"events": events[first : first + 500]} | body)
        assert response.status_code == 202, response.text
        assert response.json()["rejected"] == [], response.text


def event_time_pipeline(pipeline: Pipeline) -> None:
    """The worker's clock follows event time only (no wall-clock idle), so the test decides
    which events are late: those posted after newer ones closed their 10-second window. The
    10-second windows are kept past the 29 days of the latest events (7 days by default)."""
    pipeline.env |= {
        "COSNAP_RETENTION_10S_DAYS": "31",
        "COSNAP_WINDOW_LATENESS_S": "0",
        "COSNAP_WINDOW_GRACE_S": "1",
        "COSNAP_WATERMARK_IDLE_S": "86400",
        "COSNAP_CHECKPOINT_S": "1",
        "COSNAP_RATE_LIMIT_EVENTS_PER_S": "0",
    }


def test_events_3_minutes_to_29_days_late_count_exactly_in_every_granularity(pipeline: Pipeline) -> None:
    event_time_pipeline(pipeline)
    pipeline.start("sink", "streams", "ingest")
    rng = random.Random(7)
    base = datetime.now(UTC).replace(minute=50, second=0, microsecond=0) - timedelta(hours=3)
    on_time = [make_event(n, base + timedelta(seconds=n * 0.25), rng) for n in range(400)]
    late = [make_event(n, base - LATENESS[n % 5] + timedelta(seconds=n * 0.1), rng) for n in range(1000)]
    with client_for(pipeline) as client:
        post(client, on_time)
        post(client, late[:600], sent_at=datetime.now(UTC).isoformat())  # the SDK's batch, with sent_at
        post(client, late[:50])  # retries of late events: counted once
        post(client, on_time[:30])  # retries of on-time events, now late too: counted once
        post(client, late[600:])
        closer = {"event_id": "closer", "type": "feature", "feature": "closer", "action": "x"}
        post(client, [closer | {"timestamp": (base + timedelta(hours=2)).isoformat()}])
    cutoff = int((base + timedelta(hours=1)).timestamp()) // 3600 * 3600 + 3600

    assert wait_for(
        lambda: pipeline.query("SELECT count() FROM metrics.events FINAL") == [[1401]], timeout=120
    ), pipeline.log("sink")[-3000:]
    assert wait_for(lambda: not mismatches(pipeline, cutoff), timeout=120, interval=1), (
        mismatches(pipeline, cutoff),
        pipeline.log("streams")[-3000:],
    )
    done = reconciled(pipeline, cutoff)
    assert done.returncode == 0 and "windows match metrics.events" in done.stdout, (done.stdout, done.stderr)
    # Every late event the worker forwarded is in metrics.late_events: the first copies counted;
    # the retries of on-time events whose ids the worker no longer held (their panes closed over
    # a minute of event time before) not counted, because metrics.events holds an earlier copy.
    # The retries of late events were still held: the worker dropped them as duplicates.
    counted = pipeline.query(
        "SELECT counted, count() FROM metrics.late_events FINAL GROUP BY counted ORDER BY counted"
    )
    assert counted == [[0, 30], [1, 1000]], counted
    # The worker counts them per project on /metrics.
    metrics = httpx.get(f"{pipeline.status_urls['streams']}/metrics").text
    assert 'cosnap_streams_late_events_total{project="cosnap-test"} 1030.0' in metrics
    assert 'cosnap_streams_duplicate_events_total{project="cosnap-test"} 50.0' in metrics


def test_kill_9_of_the_worker_and_of_the_sink_while_late_batches_flow_counts_nothing_twice(
    pipeline: Pipeline,
) -> None:
    event_time_pipeline(pipeline)
    pipeline.start("sink", "streams", "ingest")
    rng = random.Random(9)
    base = datetime.now(UTC).replace(minute=50, second=0, microsecond=0) - timedelta(hours=3)
    posted = 0
    with client_for(pipeline) as client:
        post(client, [make_event(n, base + timedelta(seconds=n * 0.5), rng) for n in range(200)])
        posted += 200
        for round_ in range(20):
            batch = [
                make_event(n, base - LATENESS[n % 5] + timedelta(seconds=rng.randrange(3600)), rng)
                for n in range(round_ * 500, round_ * 500 + 500)
            ]
            post(client, batch)
            post(client, batch[:25])  # a client's retry
            posted += 500
            if round_ == 6:
                assert wait_for(lambda: checkpoints(pipeline) >= 1, timeout=30)  # a checkpoint behind it
                worker = pipeline.processes.pop("streams")
                worker.kill()  # kill -9 while it folds late batches, with a late outbox unsent
                worker.wait()
                pipeline.start("streams")
            if round_ == 13:
                sink = pipeline.processes.pop("sink")
                sink.kill()  # kill -9 while it writes corrections
                sink.wait()
                pipeline.start("sink")
        closer = {"event_id": "closer", "type": "feature", "feature": "closer", "action": "x"}
        post(client, [closer | {"timestamp": (base + timedelta(hours=2)).isoformat()}])
    cutoff = int((base + timedelta(hours=1)).timestamp()) // 3600 * 3600 + 3600

    assert wait_for(
        lambda: pipeline.query("SELECT count() FROM metrics.events FINAL") == [[posted + 1]], timeout=180
    ), pipeline.log("sink")[-3000:]
    assert wait_for(lambda: not mismatches(pipeline, cutoff), timeout=180, interval=2), (
        mismatches(pipeline, cutoff),
        pipeline.log("streams")[-3000:],
    )
    done = reconciled(pipeline, cutoff)
    assert done.returncode == 0 and "windows match metrics.events" in done.stdout, (done.stdout, done.stderr)
    assert "from its checkpoint" in (pipeline.logs / "streams.log").read_text()  # resumed, not restarted
    # A correction written twice (replayed after a kill) replaced itself: one version per part.
    assert pipeline.query(
        "SELECT count() FROM (SELECT uniqExact(count, sum) AS versions FROM metrics.aggregates"
        " GROUP BY series_id, granularity, window_start, part HAVING versions > 1)"
    ) == [[0]]


def checkpoints(pipeline: Pipeline) -> float:
    """How many checkpoints the worker has written (its /metrics; 0 before it serves them)."""
    try:
        metrics = httpx.get(f"{pipeline.status_urls['streams']}/metrics").text
    except httpx.HTTPError:
        return 0.0
    found = re.search(r"^cosnap_streams_checkpoint_duration_seconds_count (\S+)$", metrics, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def payment_failure(at: datetime, event_id: str) -> dict[str, Any]:
    tags = {"provider": "stripe", "category": "payment", "status": "failed"}
    return {
        "event_id": event_id,
        "timestamp": at.isoformat(),
        "type": "performance",
        "metric": "payment.latency",
        "value": 640.0,
        "unit": "ms",
        "tags": tags,
    }


def envelope_as_the_ingest_writes(project: str, event: dict[str, Any]) -> bytes:
    """What a produce that timed out but landed leaves in Kafka: the ingest's envelope."""
    stored = event | {
        "received_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "request_id": "timed-out",
        "timestamp": event["timestamp"].replace("+00:00", "Z"),
    }
    return orjson.dumps({"v": 1, "project": project, "events": [stored]})


def test_an_event_posted_three_times_counts_once_in_every_window_and_fires_a_rule_once(
    pipeline: Pipeline,
) -> None:
    pipeline.env |= {"COSNAP_WATERMARK_IDLE_S": "1", "COSNAP_CHECKPOINT_S": "1"}
    pipeline.start("sink", "streams", "ingest")
    assert wait_for(lambda: "[^Worker]: Ready" in pipeline.log("streams"), timeout=90)
    listener = AlertListener(pipeline.env["COSNAP_KAFKA_BOOTSTRAP"], pipeline.topics.alerts)
    # librdkafka, as the ingest: the same partitioner puts the landed copy where the ingest's go.
    producer = Producer({"bootstrap.servers": pipeline.env["COSNAP_KAFKA_BOOTSTRAP"], "acks": "all"})
    try:
        # In the last 10 s of a minute, ahead of the clock: the watermark waits for the wall clock
        # to catch up, so the failures' 10 s window stays open for the whole test (posted "now",
        # it closed before the third failure whenever the test began late in a window), and the
        # minute closes 10 s after that.
        now = datetime.now(UTC)
        start = now.replace(second=50, microsecond=0)
        if start < now + timedelta(seconds=1):
            start += timedelta(minutes=1)
        failures = [
            payment_failure(start + timedelta(milliseconds=i), f"pay-{uuid.uuid4().hex}") for i in range(3)
        ]
        with client_for(pipeline) as client:
            # Two failures, each three times (the second copy a produce that landed although the
            # client saw a 503): counted as 2, under the rule's threshold of 3.
            for failure in failures[:2]:
                post(client, [failure])
                producer.produce(
                    pipeline.topics.events,
                    key=b"cosnap-test",
                    value=envelope_as_the_ingest_writes("cosnap-test", failure),
                )
                assert producer.flush(30) == 0
                post(client, [failure])
            time.sleep(3)
            assert listener.states() == []  # 6 copies, 2 failures: no alert
            post(client, [failures[2]])  # the third failure: fires
            post(client, [failures[2]])
            assert wait_for(lambda: listener.states() == ["firing"], timeout=15), listener.records
            # The worker is killed between retries: the retries after it still count nothing.
            worker = pipeline.processes.pop("streams")
            worker.kill()
            worker.wait()
            pipeline.start("streams")
            for failure in failures:
                post(client, [failure])
        ids = ", ".join(f"'{f['event_id']}'" for f in failures)

        def counts() -> dict[str, int]:
            rows = pipeline.query(
                "SELECT granularity, sum(count) FROM metrics.windows WHERE name = 'payment.latency'"
                " GROUP BY granularity"
            )
            return {str(granularity): int(str(count)) for granularity, count in rows}

        # The hour is final only once it ends: it is checked when the test ran across an hour.
        assert wait_for(lambda: counts().keys() >= {"10s", "1m"}, timeout=150, interval=1), counts()
        assert set(counts().values()) == {3}, counts()
        in_ids = f"SELECT count() FROM metrics.events FINAL WHERE event_id IN ({ids})"  # noqa: S608
        assert pipeline.query(in_ids) == [[3]]
        time.sleep(2)
        assert listener.states().count("firing") == 1, listener.records
    finally:
        listener.close()


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    pattern=st.lists(st.tuples(st.integers(0, 15), st.integers(0, 3)), min_size=1, max_size=40),
    late=st.sets(st.integers(0, 15)),
)
def test_random_retry_patterns_count_each_event_once(
    pipeline: Pipeline, pattern: list[tuple[int, int]], late: set[int]
) -> None:
    """Events sent in any pattern of retries (each send of an event in one of four requests, the
    copies half a second apart), on time or three minutes late: the 10-second windows count each
    once, as metrics.events FINAL holds each once. (The minute and the hour are the same panes
    merged, and checked by the tests above: waiting a minute per example would cost minutes.)"""
    if not pipeline.processes:  # one pipeline for every example
        pipeline.env |= {
            "COSNAP_WATERMARK_IDLE_S": "1",
            "COSNAP_WINDOW_GRACE_S": "1",
            "COSNAP_CHECKPOINT_S": "1",
        }
        pipeline.start("sink", "streams", "ingest")
    metric = f"retry.{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)
    events = {
        number: {
            "event_id": f"{metric}-{number}",
            "timestamp": (
                now - timedelta(minutes=3 if number in late else 0, milliseconds=number)
            ).isoformat(),
            "type": "performance",
            "metric": metric,
            "value": number + 0.5,
            "unit": "ms",
        }
        for number, _ in pattern
    }
    with client_for(pipeline) as client:
        for request in range(4):
            sent = {number for number, chosen in pattern if chosen == request}
            if sent:
                post(client, [events[number] for number in sorted(sent)])
            time.sleep(0.5)
    expected = (len(events), sum(Decimal(str(e["value"])) for e in events.values()))
    stored, windows = STORED_TOTALS.format(metric=metric), WINDOW_TOTALS.format(metric=metric)

    def totals(sql: str) -> tuple[int, Decimal]:
        [[count, total]] = pipeline.query(sql)
        return int(str(count)), Decimal(str(total or 0))

    assert wait_for(lambda: totals(stored) == expected, timeout=30), (totals(stored), expected)
    assert wait_for(lambda: totals(windows) == expected, timeout=30), (totals(windows), expected)
