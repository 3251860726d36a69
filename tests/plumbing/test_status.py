"""The status endpoint of the workers: /metrics for Prometheus, /health with the worker's report
and the process's facts (uptime, version, environment, memory against its cgroup's or the
machine's limit, the check's duration), and a port already taken costs the endpoint, never the
worker."""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from plumbing.status import (
    _identity,
    answering,
    cgroup_limit,
    machine_bytes,
    memory_health,
    serve_status,
    with_memory,
)
from schemas.health import ServiceHealth, ServiceHealthAnswer
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
    assert ServiceHealth.model_validate_json(answer.content) == report  # what readers of it parse
    served = ServiceHealthAnswer.model_validate_json(answer.content)
    assert served.checks["notify"].status == "unhealthy" and served.checks["notify"].responseTime >= 0
    assert served.version == version("cosnap-metrics")
    assert served.memory.rss_bytes > 10_000_000 and served.memory.status == "ok"

    metrics = httpx.get(f"{url}/metrics", timeout=5)
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain; version=")
    assert "process_resident_memory_bytes" in metrics.text
    assert "_created" not in metrics.text  # see plumbing.status.exposition
    assert httpx.get(f"{url}/other", timeout=5).status_code == 404

    with caplog.at_level(logging.ERROR, logger="cosnap.status"):
        serve_status("127.0.0.1", port, lambda: report)  # taken by the first: logged, not raised
    assert "cannot listen" in caplog.text


def test_the_answer_carries_this_processs_uptime_version_and_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _identity.cache_clear()
    monkeypatch.delenv("COSNAP_ENVIRONMENT", raising=False)
    monkeypatch.setenv("SENTRY_ENVIRONMENT", "staging")  # Sentry's variable, as Sentry files errors
    slow = ServiceHealth(service="sink", status="healthy", details={"pending_rows": 3})

    def report() -> ServiceHealth:
        time.sleep(0.05)
        return slow

    try:
        answer = answering(report)()
    finally:
        _identity.cache_clear()
    assert (answer.environment, answer.version) == ("staging", version("cosnap-metrics"))
    assert answer.service == "sink" and answer.details == {"pending_rows": 3} and answer.status == "healthy"
    assert answer.checks["sink"].responseTime >= 50
    # Against ps's count of the seconds since this process started.
    elapsed = int(
        subprocess.run(
            ["ps", "-o", "etimes=", "-p", str(os.getpid())], capture_output=True, text=True, check=True
        ).stdout
    )
    assert abs(answer.uptime - elapsed) <= 2
    assert (answer.timestamp.tzinfo is not None) and answer.memory.limit_bytes >= answer.memory.rss_bytes


def _proc(root: Path, cgroup_lines: str, rss_pages: int = 1000, mem_total_kb: int = 16_000_000) -> Path:
    proc = root / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text(cgroup_lines)
    (proc / "self" / "statm").write_text(f"5000 {rss_pages} 300 10 0 900 0\n")
    (proc / "meminfo").write_text(f"MemTotal:       {mem_total_kb} kB\nMemFree:        1 kB\n")
    return proc


def _limit(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value + "\n")


def test_the_limit_is_the_tightest_cgroup_limit_along_the_path_else_the_machine(tmp_path: Path) -> None:
    # cgroup v2: the container's own directory and an ancestor both limit; the tighter counts.
    v2 = tmp_path / "v2"
    proc = _proc(v2, "0::/pod/app\n")
    _limit(v2 / "cg" / "pod" / "app" / "memory.max", "max")
    _limit(v2 / "cg" / "pod" / "memory.max", str(512 * 2**20))
    assert cgroup_limit(proc, v2 / "cg") == 512 * 2**20
    memory = memory_health(proc, v2 / "cg")
    assert (memory.limit, memory.limit_bytes) == ("cgroup", 512 * 2**20)
    assert memory.rss_bytes == 1000 * os.sysconf("SC_PAGE_SIZE")
    # cgroup v1: the memory hierarchy; its "no limit" is a huge number, so the machine's counts.
    v1 = tmp_path / "v1"
    proc = _proc(v1, "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n")
    _limit(v1 / "cg" / "memory" / "memory.limit_in_bytes", "9223372036854771712")
    assert cgroup_limit(proc, v1 / "cg") is None
    memory = memory_health(proc, v1 / "cg")
    assert (
        (memory.limit, memory.limit_bytes)
        == ("machine", 16_000_000 * 1024)
        == ("machine", machine_bytes(proc))
    )
    _limit(v1 / "cg" / "memory" / "docker" / "abc" / "memory.limit_in_bytes", str(2**30))
    assert memory_health(proc, v1 / "cg").limit_bytes == 2**30
    # A cgroup limit above the machine's memory limits nothing.
    _limit(v1 / "cg" / "memory" / "docker" / "abc" / "memory.limit_in_bytes", str(64 * 2**30))
    assert memory_health(proc, v1 / "cg").limit == "machine"


def test_memory_at_90_percent_of_the_limit_warns_and_degrades_a_healthy_report(tmp_path: Path) -> None:
    page = os.sysconf("SC_PAGE_SIZE")
    proc = _proc(tmp_path, "0::/\n", rss_pages=900)
    _limit(tmp_path / "cg" / "memory.max", str(1000 * page))
    memory = memory_health(proc, tmp_path / "cg")
    assert (memory.percent, memory.status) == (90.0, "warning")
    status, problems = with_memory("healthy", ["lagging"], memory)
    assert status == "degraded" and problems[0] == "lagging" and "memory at 90 %" in problems[1]
    assert with_memory("unhealthy", [], memory)[0] == "unhealthy"


@given(
    rss_pages=st.integers(min_value=0, max_value=2**26), limit_pages=st.integers(min_value=1, max_value=2**26)
)
def test_any_memory_warns_from_90_percent_of_its_limit_and_not_below(
    rss_pages: int, limit_pages: int
) -> None:
    page = os.sysconf("SC_PAGE_SIZE")
    with tempfile.TemporaryDirectory() as root:
        proc = _proc(Path(root), "0::/\n", rss_pages=rss_pages, mem_total_kb=2**40)
        _limit(Path(root) / "cg" / "memory.max", str(limit_pages * page))
        memory = memory_health(proc, Path(root) / "cg")
    status, problems = with_memory("healthy", [], memory)
    if rss_pages * 10 >= limit_pages * 9:
        assert memory.status == "warning" and status == "degraded" and problems
    elif rss_pages * 10_000 < limit_pages * 8_999:  # beyond the rounding of percent to 2 decimals
        assert memory.status == "ok" and status == "healthy" and not problems
