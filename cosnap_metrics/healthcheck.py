"""`cosnap-metrics healthcheck [SERVICE]`: the container health check (the Dockerfile's
HEALTHCHECK and each docker-compose service's `healthcheck:`). The slim image has no curl, so the
check is this command: it asks the service's own health endpoint on this host and exits 0 when
it answers 200 (`healthy` or `degraded`), 1 otherwise, as Docker expects.

Without SERVICE, the service is the one the container runs: the command its process 1 was
started with (`cosnap-metrics sink ...`).
"""

from __future__ import annotations

from pathlib import Path

import httpx

from schemas.settings import RunnerSettings

SERVICES = ("ingest", "streams", "sink", "notify", "run", "topics")
TIMEOUT_S = 5.0


def service_of(cmdline: list[str]) -> str | None:
    """The service a `cosnap-metrics` command line runs: its first argument naming one."""
    return next((arg for arg in cmdline[1:] if arg in SERVICES), None)


def container_service(proc: Path = Path("/proc")) -> str | None:
    """The service of process 1 (the container's entrypoint), from its NUL-separated cmdline."""
    try:
        cmdline = (proc / "1" / "cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    return service_of(cmdline)


def _local(host: str) -> str:
    """Where a server listening on `host` is reached from this host."""
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host  # noqa: S104 - compared, not bound


def health_url(service: str, settings: RunnerSettings) -> str:
    """The endpoint that says whether `service` does its job: the ingest's readiness, the
    workers' /health (the sink's on the query service with chDB, on its status port with a
    ClickHouse server)."""
    metrics = _local(settings.metrics_host)
    if service == "ingest":
        return f"http://{_local(settings.ingest_host)}:{settings.ingest_port}/health/ready"
    if service == "sink" and settings.embedded_clickhouse:
        return f"{settings.query_url}/health"
    port = {
        "sink": settings.sink_metrics_port,
        "streams": settings.streams_metrics_port,
        "notify": settings.notify_metrics_port,
        "run": settings.run_metrics_port,
    }[service]
    return f"http://{metrics}:{port}/health"


def topics_missing(settings: RunnerSettings) -> list[str]:
    """The pipeline's topics the broker lacks (the `topics` job is healthy once there are none)."""
    from kafka.admin import KafkaAdminClient  # imported when used: the parser imports this module

    admin = KafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id="cosnap-healthcheck",
        bootstrap_timeout_ms=int(TIMEOUT_S * 1000),
        request_timeout_ms=int(TIMEOUT_S * 1000),
    )
    try:
        present = set(admin.list_topics())
    finally:
        admin.close()
    return [spec.name for spec in settings.topics.specs() if spec.name not in present]


def healthcheck(service: str | None, settings: RunnerSettings) -> tuple[int, str]:
    """(exit status, one line saying why): 0 when `service` answers 200, else 1. Blocks up to
    TIMEOUT_S."""
    service = service or container_service()
    if service is None:
        return 1, "no service named, and process 1 runs none (give one of: " + ", ".join(SERVICES) + ")"
    if service == "topics":
        from kafka.errors import KafkaError

        try:
            missing = topics_missing(settings)
        except KafkaError as exc:
            return 1, f"topics: Kafka does not answer: {exc!r}"
        return (1, f"topics missing: {', '.join(missing)}") if missing else (0, "topics: all present")
    url = health_url(service, settings)
    try:
        response = httpx.get(url, timeout=TIMEOUT_S)
    except httpx.HTTPError as exc:
        return 1, f"{service}: {url} does not answer: {exc!r}"
    status = response.json().get("status", "?") if response.content.startswith(b"{") else "?"
    return (0 if response.status_code == 200 else 1), f"{service}: {response.status_code} {status} ({url})"
