"""Operating the pipeline: a real Prometheus (Debian's package) scrapes every service's /metrics
while events flow, and its query API shows the counters moving; `promtool check metrics` passes
on each endpoint's output; `/health/detailed` says healthy, degraded without the sink, and
unhealthy (503) without Kafka."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from cosnap_metrics.broker import KafkaBroker
from cosnap_metrics.processes import spawn, stop
from schemas.health import DetailedHealth, ServiceHealth
from tests.conftest import Pipeline, free_port, wait_for
from tests.sinks.notify.test_delivery import SECRET, Receiver

pytestmark = [pytest.mark.kafka, pytest.mark.e2e]

Prometheus = Callable[[dict[str, str]], str]


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Prometheus]:
    """Starts Debian's `prometheus` scraping {job: base URL} every second; returns its URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed; `make test` installs Debian's package")
    started = []

    def start(jobs: dict[str, str]) -> str:
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [url.removeprefix("http://")]}]}
                for job, url in jobs.items()
            ],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        url = f"http://127.0.0.1:{free_port()}"
        with (tmp_path / "prometheus.log").open("ab") as out:
            started.append(
                spawn(
                    [
                        binary,
                        f"--config.file={tmp_path / 'prometheus.yml'}",
                        f"--storage.tsdb.path={tmp_path / 'prometheus-data'}",
                        f"--web.listen-address={url.removeprefix('http://')}",
                    ],
                    stdout=out,
                )
            )
        assert wait_for(lambda: answers(f"{url}/-/ready"), 30), (tmp_path / "prometheus.log").read_text()
        return url

    yield start
    for process in started:
        stop(process, timeout=10)


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def query(prometheus: str, expr: str) -> float | None:
    """The value of an instant query that yields one sample (wrap it in sum()); None without one."""
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10)
    response.raise_for_status()
    result = response.json()["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def event(**fields: Any) -> dict[str, Any]:
    return {"event_id": uuid.uuid4().hex, "timestamp": datetime.now(UTC).isoformat()} | fields


def payment_failure() -> dict[str, Any]:
    tags = {"provider": "stripe", "category": "payment", "status": "failed"}
    return event(type="performance", metric="payment.latency", value=640.0, unit="ms", tags=tags)


def post(pipeline: Pipeline, events: list[Any]) -> httpx.Response:
    return httpx.post(
        f"{pipeline.ingest_url}/v1/events",
        json={"events": events},
        headers={"Authorization": f"Bearer {pipeline.write_key}"},
        timeout=30,
    )


def detailed(pipeline: Pipeline) -> httpx.Response:
    return httpx.get(f"{pipeline.ingest_url}/health/detailed", timeout=30)


def healthy(url: str) -> ServiceHealth | None:
    try:
        response = httpx.get(f"{url}/health", timeout=5)
    except httpx.HTTPError:
        return None
    return ServiceHealth.model_validate_json(response.content) if response.status_code == 200 else None


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook endpoint for the notifier to deliver to."""
    created = Receiver()
    yield created
    created.close()


def test_prometheus_sees_every_service_and_the_counters_move(
    pipeline: Pipeline, prometheus: Prometheus, receiver: Receiver
) -> None:
    pipeline.env |= {"COSNAP_WEBHOOK_URLS": receiver.url, "COSNAP_WEBHOOK_SECRET": SECRET}
    services = ("sink", "streams", "ingest", "notify")
    pipeline.start(*services)
    # The notifier delivers alerts published after it anchored, as in start_notifier
    # (tests/sinks/notify/test_delivery.py).
    for name in ("streams", "notify"):
        assert wait_for(lambda name=name: healthy(pipeline.status_urls[name]), 90), pipeline.log(name)
    prom = prometheus({name: pipeline.status_urls[name] for name in services})

    on_time = [event(type="feature", feature="ai_effect.anime", action="applied") for _ in range(20)]
    assert post(pipeline, on_time).status_code == 202
    assert post(pipeline, [payment_failure() for _ in range(3)]).status_code == 202  # fires payment_failures
    duplicate = event(type="feature", feature="share", action="clicked")
    mixed = [
        event(type="revenue", name="subscription.renewal", amount="9.99", currency="USD"),
        event(type="revenue", name="subscription.renewal", amount="9.99", currency="usd"),  # invalid
        duplicate,
        duplicate,  # the same event_id twice in one batch
        event(type="feature", feature="share", action="clicked", timestamp="2001-01-01T00:00:00Z"),  # too old
        "not an event",  # invalid
    ]
    response = post(pipeline, mixed)
    assert response.status_code == 202 and response.json()["accepted"] == 2, response.text
    assert post(pipeline, ["nothing good"]).status_code == 400
    # Once the watermark has passed its pane, an event two minutes old is late.
    assert wait_for(lambda: pipeline.query("SELECT count() FROM metrics.aggregates")[0][0] > 0, 90)
    two_minutes_ago = (datetime.now(UTC) - timedelta(minutes=2)).isoformat()
    late = event(type="feature", feature="ai_effect.anime", action="applied", timestamp=two_minutes_ago)
    assert post(pipeline, [late]).status_code == 202

    expectations = {
        'sum(cosnap_ingest_requests_total{route="/v1/events",status="202"})': 4,
        'sum(cosnap_ingest_requests_total{route="/v1/events",status="400"})': 1,
        "sum(cosnap_ingest_request_duration_seconds_count)": 5,
        "sum(cosnap_ingest_events_accepted_total)": 26,
        'sum(cosnap_ingest_events_rejected_total{reason="invalid"})': 3,
        'sum(cosnap_ingest_events_rejected_total{reason="duplicate"})': 1,
        'sum(cosnap_ingest_events_rejected_total{reason="timestamp"})': 1,
        "sum(cosnap_ingest_envelope_events_sum)": 26,
        'sum(cosnap_ingest_produce_duration_seconds_count{outcome="acked"})': 4,
        "sum(cosnap_streams_events_folded_total)": 25,
        "sum(cosnap_streams_late_events_total)": 1,
        'sum(cosnap_streams_windows_emitted_total{granularity="10s"})': 1,
        'sum(cosnap_streams_alert_transitions_total{rule="payment_failures",state="firing"})': 1,
        "sum(cosnap_streams_consumer_lag_records)": 0,
        'sum(cosnap_sink_rows_inserted_total{table="events"})': 26,
        'sum(cosnap_sink_rows_inserted_total{table="aggregates"})': 1,
        'sum(cosnap_sink_rows_inserted_total{table="alerts"})': 1,
        'sum(cosnap_sink_batch_rows_count{table="events"})': 1,
        "sum(cosnap_sink_insert_duration_seconds_count)": 3,
        'sum(cosnap_notify_deliveries_total{outcome="delivered"})': 1,
        "sum(cosnap_notify_delivery_duration_seconds_count)": 1,
        "sum(up)": len(services),
    }

    def reached() -> dict[str, float | None]:
        """The expectations Prometheus does not meet yet, with what it has."""
        values = {expr: query(prom, expr) for expr in expectations}
        return {expr: v for expr, v in values.items() if v is None or v < expectations[expr]}

    assert wait_for(lambda: not reached(), 120, interval=1), reached()
    assert receiver.deliveries, "the notifier delivered the firing alert"

    for name in services:
        exposition = httpx.get(f"{pipeline.status_urls[name]}/metrics", timeout=10)
        assert exposition.status_code == 200
        assert exposition.headers["content-type"].startswith("text/plain; version=")
        lint = subprocess.run(
            ["promtool", "check", "metrics"], input=exposition.content, capture_output=True, timeout=30
        )
        assert lint.returncode == 0, f"{name}: {lint.stdout.decode()}{lint.stderr.decode()}"

    report = DetailedHealth.model_validate_json(detailed(pipeline).content)
    assert report.status == "healthy", report.problems
    lags = {group.group.removeprefix(pipeline.topics.internal): group for group in report.consumer_lag}
    assert set(lags) == {"sink", "streams", "notify"}
    assert lags["sink"].lag is not None and lags["streams"].lag is not None
    assert report.clickhouse.sink is not None
    assert any(p.startswith(pipeline.topics.events) for p in report.clickhouse.sink.details["partitions"])


def test_detailed_health_is_degraded_without_the_sink(pipeline: Pipeline) -> None:
    pipeline.start("sink", "ingest")
    ok = detailed(pipeline)
    assert ok.status_code == 200
    report = DetailedHealth.model_validate_json(ok.content)
    assert report.status == "healthy", report.problems
    assert report.kafka.reachable and report.kafka.missing_topics == []
    assert report.clickhouse.answers
    assert report.memory.rss_bytes > 10_000_000

    pipeline.stop("sink")
    time.sleep(2.5)  # past the cached report
    degraded = detailed(pipeline)
    assert degraded.status_code == 200
    report = DetailedHealth.model_validate_json(degraded.content)
    assert report.status == "degraded"
    assert not report.clickhouse.answers
    assert any("ClickHouse" in problem for problem in report.problems)


def test_detailed_health_is_unhealthy_503_without_kafka_and_stays_fast(
    pipeline_on_own_kafka: Pipeline, own_kafka: KafkaBroker
) -> None:
    pipeline = pipeline_on_own_kafka
    pipeline.start("sink", "ingest")
    assert detailed(pipeline).status_code == 200
    own_kafka.stop()
    time.sleep(2.5)  # past the cached report
    started = time.monotonic()
    down = detailed(pipeline)
    took = time.monotonic() - started
    assert down.status_code == 503
    report = DetailedHealth.model_validate_json(down.content)
    assert report.status == "unhealthy"
    assert not report.kafka.reachable
    assert took < 8, f"{took:.1f}s"
    started = time.monotonic()
    assert detailed(pipeline).status_code == 503  # the cached report
    assert time.monotonic() - started < 1
    assert httpx.get(f"{pipeline.ingest_url}/health", timeout=5).status_code == 200  # alive all the same
