"""The status endpoint of the workers: /metrics for Prometheus, /health with the worker's report,
and a port already taken costs the endpoint, never the worker."""

from __future__ import annotations

import logging

import httpx
import pytest

from plumbing.status import serve_status
from schemas.health import ServiceHealth
from tests.conftest import free_port, wait_for


def test_metrics_and_health_are_served_and_a_taken_port_is_only_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    report = ServiceHealth(service="notify", status="unhealthy", problems=["not consuming alerts yet"])
    serve_status("127.0.0.1", port, lambda: report)
    url = f"http://127.0.0.1:{port}"

    def health() -> httpx.Response | None:
        try:
            return httpx.get(f"{url}/health", timeout=2)
        except httpx.HTTPError:
            return None

    answer = wait_for(health, 10)
    assert answer is not None and answer.status_code == 503
    assert ServiceHealth.model_validate_json(answer.content) == report

    metrics = httpx.get(f"{url}/metrics", timeout=5)
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain; version=")
    assert "process_resident_memory_bytes" in metrics.text
    assert "_created" not in metrics.text  # see plumbing.status.exposition
    assert httpx.get(f"{url}/other", timeout=5).status_code == 404

    with caplog.at_level(logging.ERROR, logger="cosnap.status"):
        serve_status("127.0.0.1", port, lambda: report)  # taken by the first: logged, not raised
    assert "cannot listen" in caplog.text
