"""The Python SDK: buffering, batching and retries against a scripted API, then on the real
pipeline, including the acceptance test of Kafka stopping and starting under load."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from cosnap_metrics_sdk import MetricsClient
from cosnap_metrics_sdk.backoff import Backoff, parse_retry_after
from cosnap_metrics_sdk.buffer import EventBuffer
from cosnap_metrics_sdk.events import EncodedEvent

from cosnap_metrics.broker import KafkaBroker
from tests.conftest import Pipeline, free_port, wait_for
from tests.sdk.conftest import Captured, Reply, ScriptedApi


def quiet_client(url: str, write_key: str = "key", **options: Any) -> MetricsClient:
    """A client that sends only when told to (flush, close) or for revenue/critical events."""
    return MetricsClient(url, write_key, flush_interval=3600.0, flush_at=10_000, **options)


# -- pure pieces ---------------------------------------------------------------------------------


def _event(n: int, size: int = 10) -> EncodedEvent:
    return EncodedEvent(event_id=f"e{n}", body=b"x" * size, urgent=False)


def test_buffer_drops_oldest_and_requeues_in_order() -> None:
    buffer = EventBuffer(max_events=4)
    dropped = [d.event.event_id for n in range(6) for d in buffer.append(_event(n))]
    assert dropped == ["e0", "e1"]
    batch = buffer.take(max_events=2, max_bytes=10_000)
    assert [p.event.event_id for p in batch] == ["e2", "e3"]
    assert buffer.append(_event(6)) == []
    # The failed batch goes back in front; over the bound, its oldest event is the one dropped.
    assert [d.event.event_id for d in buffer.requeue(batch)] == ["e2"]
    assert [p.event.event_id for p in buffer.take(10, 10_000)] == ["e3", "e4", "e5", "e6"]
    assert [buffer.oldest_seq, buffer.last_seq] == [None, 7]


def test_buffer_take_respects_the_byte_limit_but_takes_at_least_one() -> None:
    buffer = EventBuffer(max_events=100)
    for n in range(5):
        buffer.append(_event(n, size=100))
    assert len(buffer.take(max_events=10, max_bytes=250)) == 2  # 100 + 1 + 100
    assert len(buffer.take(max_events=10, max_bytes=50)) == 1  # too big alone: sent alone
    assert len(buffer) == 2


def test_backoff_grows_with_jitter_and_retry_after_wins() -> None:
    backoff = Backoff(initial=0.5, cap=30.0)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (10, 30.0), (100, 30.0)]:
        delays = [backoff.delay(attempt) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1
    assert backoff.delay(7, retry_after=2.0) == 2.0
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("99999") == 300.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    now = datetime(2025, 1, 1, tzinfo=UTC)
    assert parse_retry_after("Wed, 01 Jan 2025 00:00:10 GMT", now=now) == 10.0


def test_invalid_arguments_raise_at_the_call_site(api: ScriptedApi) -> None:
    with quiet_client(api.url) as client:
        with pytest.raises(TypeError, match="float"):
            client.track_revenue("credits.purchase", 4.99, "EUR")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="decimal"):
            client.track_revenue("credits.purchase", "4,99", "EUR")
        with pytest.raises(ValueError, match="finite"):
            client.track_performance("api.latency", float("nan"))
        with pytest.raises(ValueError, match="timezone"):
            client.track_feature_usage("share", "clicked", timestamp=datetime(2025, 1, 1))
        with pytest.raises(TypeError, match="tags"):
            client.track_feature_usage("share", "clicked", tags={"n": 1})  # type: ignore[dict-item]
        assert client.pending == 0
    assert api.received() == []


# -- the client against a scripted API -----------------------------------------------------------


def test_events_carry_the_fields_of_the_api(api: ScriptedApi) -> None:
    ts = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
    with quiet_client(api.url, "wk_test", environment="prod", release="1.2.3") as client:
        ids = [
            client.track_conversion_step("onboarding", "signed_up", 1, anonymous_id="a1", timestamp=ts),
            client.track_feature_usage("ai_effect.anime", "applied", user_id="u1", tags={"plan": "pro"}),
            client.track_performance("api.latency", 123.5, severity="warning", session_id="s1"),
            client.track_revenue("subscription.renewal", Decimal("9.990"), "USD", user_id="u1"),
        ]
        assert client.flush(timeout=5)
        assert client.delivered == 4
    (request,) = api.received()
    assert request.path == "/v1/events"
    assert request.headers["Authorization"] == "Bearer wk_test"
    assert request.headers["Content-Type"] == "application/json"
    sent_at = datetime.fromisoformat(request.body["sent_at"])
    assert abs(sent_at - datetime.now(UTC)) < timedelta(seconds=5)
    conversion, feature, performance, revenue = request.body["events"]
    assert request.event_ids == ids
    assert all(re.fullmatch(r"[0-9a-f]{32}", event_id) for event_id in ids)
    common = {"source": "backend", "environment": "prod", "release": "1.2.3"}
    assert conversion == common | {
        "type": "conversion",
        "event_id": ids[0],
        "timestamp": "2025-03-01T12:00:00.123Z",
        "funnel": "onboarding",
        "step": "signed_up",
        "step_index": 1,
        "anonymous_id": "a1",
    }
    assert feature["tags"] == {"plan": "pro"} and feature["user_id"] == "u1"
    assert performance["tags"] == {"severity": "warning"}
    assert (performance["value"], performance["unit"], performance["session_id"]) == (123.5, "ms", "s1")
    assert revenue["amount"] == "9.990"  # a JSON string: every digit kept
    assert datetime.fromisoformat(revenue["timestamp"]) <= sent_at


def test_retries_reuse_event_ids_and_honour_retry_after(api: ScriptedApi) -> None:
    api.script.extend([Reply(503, {"Retry-After": "1"}), Reply(429), Reply(502)])
    with quiet_client(api.url, backoff_initial=0.05, backoff_cap=0.1) as client:
        ids = [client.track_feature_usage("share", "clicked", user_id=f"u{n}") for n in range(20)]
        assert client.flush(timeout=10)
        assert (client.delivered, client.dropped, client.rejected) == (20, 0, 0)
    requests = api.received()
    assert [r.event_ids for r in requests] == [ids] * 4
    gaps = [later.at - earlier.at for earlier, later in zip(requests, requests[1:], strict=False)]
    assert gaps[0] >= 0.95  # Retry-After: 1
    assert max(gaps[1:]) < 0.5  # no Retry-After: the (short) exponential backoff
    # Each attempt stamps its own sent_at, so the server's skew correction stays right.
    assert requests[0].body["sent_at"] != requests[1].body["sent_at"]


@pytest.mark.parametrize("status", [400, 401, 403, 413, 415])
def test_refused_batches_are_dropped_not_retried(api: ScriptedApi, sdk_log: Captured, status: int) -> None:
    api.script.append(Reply(status, body={"detail": "nope"}))
    with quiet_client(api.url, backoff_initial=0.05) as client:
        first = [client.track_feature_usage("share", "clicked") for _ in range(3)]
        assert client.flush(timeout=5)
        later = client.track_feature_usage("share", "clicked")
        assert client.flush(timeout=5)
        assert (client.delivered, client.rejected, client.dropped) == (1, 3, 0)
    assert [r.event_ids for r in api.received()] == [first, [later]]
    assert any(str(status) in m and "nope" in m for m in sdk_log.messages(logging.ERROR))


def test_rejected_items_of_a_202_are_logged_not_retried(api: ScriptedApi, sdk_log: Captured) -> None:
    reason = "currency: currency must be an ISO 4217 code such as USD"
    api.script.append(Reply(202, body={"accepted": 1, "rejected": [{"index": 1, "reason": reason}]}))
    with quiet_client(api.url) as client:
        client.track_feature_usage("share", "clicked")
        bad = client.track_revenue("credits.purchase", "4.99", "XXX")
        assert client.flush(timeout=5)
        assert (client.delivered, client.rejected) == (1, 1)
    assert len(api.received()) == 1
    assert any(bad in m and reason in m for m in sdk_log.messages(logging.WARNING))


def test_full_buffer_drops_the_oldest(api: ScriptedApi, sdk_log: Captured) -> None:
    with quiet_client(api.url, max_buffer=10) as client:
        ids = [client.track_feature_usage("share", "clicked") for _ in range(25)]
        assert client.dropped == 15
        assert client.pending == 10
    assert api.event_ids() == ids[-10:]
    assert any("buffer full" in m for m in sdk_log.messages(logging.WARNING))


def test_track_returns_at_once_while_the_server_hangs(api: ScriptedApi) -> None:
    release = threading.Event()
    api.script.append(Reply(hang=release))
    client = MetricsClient(api.url, "key", flush_at=10, max_buffer=1000, request_timeout=60)
    try:
        for _ in range(10):
            client.track_feature_usage("share", "clicked")
        api.wait_requests(1)  # the worker is now stuck in a request that does not answer
        slowest = 0.0
        started = time.monotonic()
        for n in range(3000):
            before = time.monotonic()
            if n % 3 == 0:
                client.track_revenue("credits.purchase", "0.99", "USD")
            else:
                client.track_performance("api.latency", float(n), severity="critical")
            slowest = max(slowest, time.monotonic() - before)
        # A call that waited on the stuck request would wait for its 60 s timeout: the bounds
        # are far below that and far above what a loaded machine's scheduler adds (0.38 s seen
        # for one call in make test beside three other test processes on two cores).
        assert time.monotonic() - started < 5.0
        assert slowest < 1.0
        assert client.dropped == 2000  # 3000 tracked into a buffer of 1000 behind a stuck batch
        assert not client.flush(timeout=0.2)  # it does block, and gives up at the timeout
    finally:
        release.set()
        assert client.close(timeout=10)
    assert len(api.event_ids()) == 1010


def test_an_unreachable_api_never_raises_into_the_caller(sdk_log: Captured) -> None:
    client = MetricsClient(f"http://127.0.0.1:{free_port()}", "key", flush_at=1, backoff_initial=0.05)
    client.track_revenue("credits.purchase", "0.99", "USD")
    client.track_feature_usage("share", "clicked")
    assert not client.flush(timeout=0.5)
    started = time.monotonic()
    assert not client.close(timeout=0.5)
    assert time.monotonic() - started < 2.0
    assert client.delivered == 0 and client.dropped == 2
    assert any("ConnectError" in m for m in sdk_log.messages(logging.WARNING))
    assert any("not delivered" in m for m in sdk_log.messages(logging.ERROR))
    client.track_feature_usage("share", "clicked")  # after close: dropped, not raised
    assert client.dropped == 3


def test_max_retries_bounds_the_attempts(api: ScriptedApi) -> None:
    api.fallback = Reply(503)
    with quiet_client(api.url, max_retries=2, backoff_initial=0.05) as client:
        client.track_feature_usage("share", "clicked")
        assert client.flush(timeout=5)
        assert client.dropped == 1
    assert len(api.received()) == 3


def test_revenue_and_critical_events_are_sent_at_once(api: ScriptedApi) -> None:
    with quiet_client(api.url) as client:
        waiting = [client.track_feature_usage("share", "clicked") for _ in range(3)]
        waiting.append(client.track_performance("api.latency", 12.0, severity="warning"))
        time.sleep(0.3)
        assert api.received() == []
        revenue = client.track_revenue("subscription.renewal", "9.99", "USD")
        assert [r.event_ids for r in api.wait_requests(1)] == [[*waiting, revenue]]
        critical = client.track_performance("payment.latency", 9000.0, severity="critical")
        assert [r.event_ids for r in api.wait_requests(2)][1:] == [[critical]]


def test_a_batch_goes_when_flush_at_events_wait(api: ScriptedApi) -> None:
    with MetricsClient(api.url, "key", flush_interval=3600, flush_at=5) as client:
        ids = [client.track_feature_usage("share", "clicked") for _ in range(4)]
        time.sleep(0.3)
        assert api.received() == []
        ids.append(client.track_feature_usage("share", "clicked"))
        assert [r.event_ids for r in api.wait_requests(1)] == [ids]


def test_a_batch_goes_every_flush_interval(api: ScriptedApi) -> None:
    with MetricsClient(api.url, "key", flush_interval=0.3, flush_at=1000) as client:
        started = time.monotonic()
        first = client.track_feature_usage("share", "clicked")
        assert [r.event_ids for r in api.wait_requests(1, timeout=2)] == [[first]]
        assert time.monotonic() - started < 1.0
        second = client.track_feature_usage("share", "clicked")
        assert [r.event_ids for r in api.wait_requests(2, timeout=2)][1:] == [[second]]


def test_batches_hold_at_most_max_batch_events(api: ScriptedApi) -> None:
    with quiet_client(api.url, max_batch=7) as client:
        ids = [client.track_feature_usage("share", "clicked") for _ in range(20)]
        assert client.flush(timeout=5)
    assert [len(r.event_ids) for r in api.received()] == [7, 7, 6]
    assert api.event_ids() == ids


def test_close_flushes_and_stops_the_thread(api: ScriptedApi) -> None:
    with quiet_client(api.url) as client:
        ids = [client.track_feature_usage("share", "clicked") for _ in range(5)]
    assert api.event_ids() == ids
    assert not client._worker.is_alive()
    assert client.close()  # idempotent


def test_interpreter_exit_flushes(api: ScriptedApi) -> None:
    script = textwrap.dedent(
        f"""
        from cosnap_metrics_sdk import MetricsClient
        client = MetricsClient({api.url!r}, "key", flush_interval=3600, flush_at=10_000)
        for n in range(5):
            print(client.track_feature_usage("share", "clicked", user_id=f"u{{n}}"))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert api.event_ids() == done.stdout.split()


def test_concurrent_tracking_from_many_threads(api: ScriptedApi) -> None:
    with MetricsClient(api.url, "key", flush_at=50, flush_interval=0.2) as client:

        def track(worker: int) -> None:
            for n in range(500):
                client.track_feature_usage("share", "clicked", user_id=f"w{worker}-{n}")

        threads = [threading.Thread(target=track, args=(w,)) for w in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert client.flush(timeout=10)
        assert client.delivered == 4000
    ids = api.event_ids()
    assert len(ids) == len(set(ids)) == 4000


# -- on the real pipeline ------------------------------------------------------------------------


def track_mixed(client: MetricsClient, n: int) -> Decimal:
    """Track event `n` of a mix of the four types; return the revenue it added."""
    kind = n % 4
    if kind == 0:
        client.track_revenue("credits.purchase", "4.990000001", "EUR", user_id=f"u{n % 37}")
        return Decimal("4.990000001")
    if kind == 1:
        client.track_conversion_step("onboarding", "photo_uploaded", 2, anonymous_id=f"a{n % 11}")
    elif kind == 2:
        client.track_feature_usage("ai_effect.anime", "applied", tags={"plan": "pro"})
    else:
        client.track_performance("api.latency", n * 0.5, severity="critical" if n % 100 == 3 else "info")
    return Decimal(0)


def events_count(pipeline: Pipeline) -> tuple[int, int]:
    total, unique = pipeline.query("SELECT count(), uniqExact(event_id) FROM metrics.events FINAL")[0]
    return int(str(total)), int(str(unique))


@pytest.mark.kafka
@pytest.mark.e2e
def test_sdk_events_reach_clickhouse(pipeline: Pipeline) -> None:
    pipeline.start("sink", "ingest")
    with MetricsClient(
        pipeline.ingest_url, pipeline.write_key, flush_at=50, environment="test", release="sdk-1"
    ) as client:
        revenue = sum((track_mixed(client, n) for n in range(400)), Decimal(0))
        assert client.flush(timeout=30)
        assert (client.delivered, client.rejected, client.dropped) == (400, 0, 0)

    assert wait_for(lambda: events_count(pipeline) == (400, 400), timeout=30), pipeline.log("sink")
    rows = pipeline.query(
        "SELECT type, count(), toString(sum(amount)), any(source), any(environment), any(release)"
        " FROM metrics.events FINAL GROUP BY type ORDER BY type"
    )
    assert [row[:2] for row in rows] == [
        ["conversion", 100],
        ["feature", 100],
        ["performance", 100],
        ["revenue", 100],
    ]
    assert Decimal(str(rows[3][2])) == revenue == Decimal("499.0000001")
    assert {tuple(row[3:]) for row in rows} == {("backend", "test", "sdk-1")}
    critical = pipeline.query("SELECT count() FROM metrics.events WHERE tags['severity'] = 'critical'")
    assert critical == [[4]]


@pytest.mark.kafka
@pytest.mark.e2e
def test_kafka_restart_under_load_loses_and_duplicates_nothing(
    pipeline_on_own_kafka: Pipeline, own_kafka: KafkaBroker
) -> None:
    """Stopping Kafka while the SDK sends 10,000 events and starting it again: every event
    reaches metrics.events exactly once."""
    broker, pipeline = own_kafka, pipeline_on_own_kafka
    pipeline.env |= {"COSNAP_PRODUCE_TIMEOUT_S": "3"}  # answer 503 quickly while Kafka is down
    pipeline.start("sink", "ingest")
    total = 10_000
    client = MetricsClient(
        pipeline.ingest_url, pipeline.write_key, flush_interval=1.0, flush_at=200, backoff_cap=5.0
    )
    tracked = Counter[str]()

    def send() -> None:
        started = time.monotonic()
        for n in range(total):
            track_mixed(client, n)
            tracked["events"] += 1
            if n % 100 == 99:  # a steady 1,000 events a second
                time.sleep(max(0.0, started + (n + 1) / 1000 - time.monotonic()))

    sender = threading.Thread(target=send, name="sdk-load")
    sender.start()
    time.sleep(2.0)
    broker.stop()
    stopped_at = tracked["events"]
    time.sleep(5.0)
    broker.start()
    sender.join()
    assert client.close(timeout=120), pipeline.log("ingest")
    assert (client.delivered, client.rejected, client.dropped) == (total, 0, 0)
    assert 0 < stopped_at < total  # Kafka really went away mid-stream

    for name in ("ingest", "sink"):
        assert pipeline.processes[name].poll() is None, f"{name} died:\n{pipeline.log(name)}"
    landed = wait_for(lambda: events_count(pipeline) == (total, total), timeout=90, interval=0.5)
    assert landed, f"{events_count(pipeline)} of {total}\n{pipeline.log('sink')}"
