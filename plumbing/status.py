"""Where every service shows its Prometheus metrics. The ingest API and the query service add
`GET /metrics` to their FastAPI apps (`plumbing.metrics_route`); the processes without an HTTP
API of their own (the streams worker, the notifier, and the sink when ClickHouse is a server)
serve `GET /metrics` and `GET /health` (a `schemas.health.ServiceHealth`) from a daemon thread.

Metrics are an aid to operating the pipeline, never a reason to stop it: a port that cannot be
bound is logged and the service runs on without the endpoint.

Every health answer carries the process's facts (`schemas.health.ProcessHealth`), made here:
`process_health` for the ingest API's answers, `answering` for the workers' reports.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import version
from pathlib import Path
from typing import Literal

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, disable_created_metrics, generate_latest

from schemas.health import (
    MEMORY_WARNING_PERCENT,
    Check,
    HealthStatus,
    MemoryHealth,
    ProcessHealth,
    ServiceHealth,
    ServiceHealthAnswer,
    http_status,
)
from schemas.settings import CommonSettings

log = logging.getLogger("cosnap.status")


def exposition() -> bytes:
    """This process's metrics in the text format. Without the `_created` series that
    prometheus_client adds beside every counter and histogram: they double what Prometheus
    stores, for a start time that rate() and increase() do not need."""
    disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus_client 0.26
    return generate_latest(REGISTRY)


PROC = Path("/proc")
CGROUP = Path("/sys/fs/cgroup")
# cgroup v1 writes "no limit" as the largest multiple of the page size below 2**63.
_NO_LIMIT = 2**62


def resident_bytes(proc: Path = PROC) -> int:
    """The process's resident set size (Linux: statm counts pages)."""
    return int((proc / "self" / "statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def uptime_s(proc: Path = PROC) -> float:
    """Seconds since this process started: the system's uptime minus the process's start time
    (field 22 of /proc/self/stat, in clock ticks since boot; the fields after the command's
    closing parenthesis, which may itself hold spaces)."""
    started_ticks = int((proc / "self" / "stat").read_text().rpartition(")")[2].split()[19])
    system_up = float((proc / "uptime").read_text().split()[0])
    return max(system_up - started_ticks / os.sysconf("SC_CLK_TCK"), 0.0)


def _read_limit(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) < _NO_LIMIT else None


def cgroup_limit(proc: Path = PROC, cgroup: Path = CGROUP) -> int | None:
    """The tightest memory limit of the process's cgroup and its ancestors: cgroup v2's
    `memory.max`, or v1's `memory.limit_in_bytes` under the `memory` hierarchy; None when none
    is set (or cgroups are not mounted). In a container the cgroup's own directory is the root of
    the mount, so the root is read too."""
    limits = []
    for line in (proc / "self" / "cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            base, name = cgroup, "memory.max"
        elif "memory" in controllers.split(","):
            base, name = cgroup / "memory", "memory.limit_in_bytes"
        else:
            continue
        where = Path(path.lstrip("/"))
        for directory in (where, *where.parents):
            limit = _read_limit(base / directory / name)
            if limit is not None:
                limits.append(limit)
    return min(limits, default=None)


def machine_bytes(proc: Path = PROC) -> int:
    """The machine's memory: MemTotal of /proc/meminfo (kB)."""
    for line in (proc / "meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise OSError("no MemTotal in meminfo")


def memory_health(proc: Path = PROC, cgroup: Path = CGROUP) -> MemoryHealth:
    """The process's resident memory against its limit: its cgroup's when that is below the
    machine's memory, else the machine's; a warning from MEMORY_WARNING_PERCENT."""
    rss, machine, limited = resident_bytes(proc), machine_bytes(proc), cgroup_limit(proc, cgroup)
    source: Literal["cgroup", "machine"] = (
        "cgroup" if limited is not None and limited < machine else "machine"
    )
    limit = limited if source == "cgroup" and limited is not None else machine
    percent = round(100 * rss / limit, 2)
    return MemoryHealth(
        rss_bytes=rss,
        limit_bytes=limit,
        limit=source,
        percent=percent,
        status="warning" if percent >= MEMORY_WARNING_PERCENT else "ok",
    )


@functools.cache
def _identity() -> tuple[str, str]:
    """The package version and the environment, read once: the environment is the one Sentry
    files errors under (COSNAP_ENVIRONMENT, else SENTRY_ENVIRONMENT, else production)."""
    return version("cosnap-metrics"), CommonSettings().environment


def process_health(checks: dict[str, Check]) -> ProcessHealth:
    """The facts of this process every health answer carries, with the answer's `checks`."""
    package, environment = _identity()
    return ProcessHealth(
        timestamp=datetime.now(UTC),
        uptime=round(uptime_s(), 3),
        environment=environment,
        version=package,
        memory=memory_health(),
        checks=checks,
    )


def elapsed_ms(started: float) -> float:
    """Milliseconds since `started` (a time.perf_counter()): a check's responseTime."""
    return round((time.perf_counter() - started) * 1000, 3)


def with_memory(
    status: HealthStatus, problems: list[str], memory: MemoryHealth
) -> tuple[HealthStatus, list[str]]:
    """A report's status and problems once its process's memory is counted: a warning makes a
    healthy report degraded, and says so."""
    if memory.status == "ok":
        return status, problems
    problem = f"memory at {memory.percent:.0f} % of its {memory.limit} limit ({memory.limit_bytes} bytes)"
    return ("degraded" if status == "healthy" else status), [*problems, problem]


def answering(health: Callable[[], ServiceHealth]) -> Callable[[], ServiceHealthAnswer]:
    """`health` made into the answer a status endpoint serves: the report, timed as the check
    named after its service, with the process's facts (its memory may degrade it)."""

    def answer() -> ServiceHealthAnswer:
        started = time.perf_counter()
        report = health()
        facts = process_health(
            {report.service: Check(status=report.status, responseTime=elapsed_ms(started))}
        )
        status, problems = with_memory(report.status, report.problems, facts.memory)
        return ServiceHealthAnswer(
            **facts.model_dump(),
            **report.model_dump(exclude={"status", "problems"}),
            status=status,
            problems=problems,
        )

    return answer


def serve_status(host: str, port: int, health: Callable[[], ServiceHealth]) -> None:
    """Serve /metrics and /health on `host:port` from a daemon thread until the process exits;
    nothing when `port` is 0 (off) or cannot be bound. `health` is called on the server's
    threads: it must only read state that the service publishes whole (never iterate what
    another thread mutates). /health serves it as `answering` makes it."""
    if port == 0:
        return
    answer = answering(health)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._answer(200, CONTENT_TYPE_LATEST, exposition())
            elif self.path == "/health":
                report = answer()
                self._answer(
                    http_status(report.status), "application/json", report.model_dump_json().encode()
                )
            else:
                self._answer(404, "text/plain", b"not found: /metrics and /health are served here\n")

        def _answer(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Scrapes every few seconds would drown the service's log."""

    try:
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError as exc:
        log.error("metrics and health not served: cannot listen on %s:%d: %s", host, port, exc)
        return
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="status", daemon=True).start()
    log.info("metrics on http://%s:%d/metrics, health on /health", host, port)
