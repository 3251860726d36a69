"""Every health answer of the running pipeline (real Kafka, chDB, the services as processes)
carries its status, timestamp, uptime, environment, version, memory against its limit and each
check's duration, beside the fields it had before; `cosnap-metrics healthcheck` (the containers'
HEALTHCHECK) passes on each service that answers and fails on one that does not run."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from typing import Any

import httpx
import pytest

from schemas.health import DetailedHealth, Liveness, ProcessHealth, Readiness, ServiceHealthAnswer
from tests.conftest import Pipeline

pytestmark = [pytest.mark.kafka, pytest.mark.e2e]


def get(url: str) -> httpx.Response:
    return httpx.get(url, timeout=30)


def assert_process_facts(answer: ProcessHealth, body: dict[str, Any]) -> None:
    """The facts as a service of this test's environment states them, under the guide's names."""
    assert {"status", "timestamp", "uptime", "environment", "version", "memory", "checks"} <= set(body)
    assert abs(datetime.now(UTC) - answer.timestamp) < timedelta(minutes=1)
    assert 0 < answer.uptime < 600
    assert (answer.environment, answer.version) == ("staging", version("cosnap-metrics"))
    memory = answer.memory
    assert memory.rss_bytes > 10_000_000 and memory.limit_bytes > memory.rss_bytes
    assert memory.percent == round(100 * memory.rss_bytes / memory.limit_bytes, 2) and memory.status == "ok"
    for check in body["checks"].values():
        assert check["responseTime"] >= 0


def test_every_health_answer_carries_the_process_facts_and_timed_checks(pipeline: Pipeline) -> None:
    pipeline.env["COSNAP_ENVIRONMENT"] = "staging"
    pipeline.start("sink", "streams", "ingest")

    live = get(f"{pipeline.ingest_url}/health")
    assert live.status_code == 200 and live.json()["status"] == "ok"
    assert_process_facts(Liveness.model_validate_json(live.content), live.json())

    ready = get(f"{pipeline.ingest_url}/health/ready")
    assert ready.status_code == 200
    readiness = Readiness.model_validate_json(ready.content)
    assert readiness.status == "ready" and readiness.checks["kafka"].status == "healthy"
    assert_process_facts(readiness, ready.json())

    detailed = get(f"{pipeline.ingest_url}/health/detailed")
    assert detailed.status_code == 200
    report = DetailedHealth.model_validate_json(detailed.content)
    assert report.status == "healthy", report.problems
    assert set(report.checks) == {"kafka", "clickhouse"}
    assert all(check.status == "healthy" for check in report.checks.values())
    assert report.checked_at == report.timestamp and report.kafka.reachable and report.clickhouse.answers
    assert_process_facts(report, detailed.json())

    # The workers' answers: the sink's (served by the query service on chDB) and the worker's,
    # whose status server starts with it (start() waits for the sink and the ingest only) and
    # answers 503 until its timer first ran.
    pipeline.wait_http(f"{pipeline.status_urls['streams']}/health", "streams")
    for name, url in (("sink", pipeline.query_url), ("streams", pipeline.status_urls["streams"])):
        answer = get(f"{url}/health")
        served = ServiceHealthAnswer.model_validate_json(answer.content)
        assert served.service == name and set(served.checks) == {name}
        assert served.checks[name].status == served.status
        assert_process_facts(served, answer.json())
        # Each process counts its own uptime: the sink started seconds before the ingest.
        if name == "sink":
            assert served.uptime > report.uptime + (served.timestamp - report.timestamp).total_seconds()

    def healthcheck(service: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "cosnap_metrics.cli", "healthcheck", service]
        return subprocess.run(
            command, env=pipeline.env, capture_output=True, text=True, timeout=60, check=False
        )

    for service in ("sink", "ingest", "topics", "streams"):
        passed = healthcheck(service)
        assert passed.returncode == 0 and passed.stdout.startswith(f"{service}: "), passed
    down = healthcheck("notify")  # not started here
    assert down.returncode == 1 and "does not answer" in down.stderr
