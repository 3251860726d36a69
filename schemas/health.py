"""Health reports: `GET /health`, `/health/ready` and `/health/detailed` of the ingest API and
`GET /health` of the sink, the streams worker, the notifier and the runner (docs/reference.md,
"Health"). The ingest API reads the sink's and the runner's reports, so both ends share these
models.

Every answer carries the fields of `ProcessHealth`: when it was made, how long the process has
run, its environment and version, its memory against its limit, and how long each check took.
Every report answers 200 when `healthy` or `degraded` and 503 when `unhealthy`; `problems` says
in words what made it less than healthy.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

HealthStatus = Literal["healthy", "degraded", "unhealthy"]
# A process's resident memory at or above this share of its limit is a warning, and makes a
# report that is otherwise healthy `degraded`.
MEMORY_WARNING_PERCENT = 90.0


def http_status(status: HealthStatus) -> int:
    """The HTTP status of a report: load balancers and orchestrators act on it, not on the body."""
    return 503 if status == "unhealthy" else 200


class MemoryHealth(BaseModel):
    rss_bytes: int = Field(description="Resident memory of the process")
    limit_bytes: int = Field(description="The memory the process may use: see `limit`")
    limit: Literal["cgroup", "machine"] = Field(
        description="Where `limit_bytes` comes from: the memory limit of the process's cgroup (a "
        "container's), or the machine's memory when no cgroup limits it below that"
    )
    percent: float = Field(description="rss_bytes as a percentage of limit_bytes")
    status: Literal["ok", "warning"] = Field(
        description=f"warning at {MEMORY_WARNING_PERCENT:.0f} % and above"
    )


class Check(BaseModel):
    """One check a report made, and how long it took."""

    status: HealthStatus
    responseTime: float = Field(  # noqa: N815 - the field's name on the wire
        ge=0, description="How long the check took, in milliseconds"
    )


class ProcessHealth(BaseModel):
    """What every health answer carries besides its verdict."""

    timestamp: datetime = Field(description="When the answer was made (UTC)")
    uptime: float = Field(ge=0, description="Seconds since the process started")
    environment: str = Field(description="COSNAP_ENVIRONMENT, else SENTRY_ENVIRONMENT, else production")
    version: str = Field(description="The version of the cosnap-metrics package the process runs")
    memory: MemoryHealth
    checks: dict[str, Check] = Field(
        default_factory=dict, description="Each check of the answer by name, with its status and duration"
    )


class Liveness(ProcessHealth):
    """`GET /health` of the ingest API: the process serves requests (always 200)."""

    status: Literal["ok"] = "ok"


class Readiness(ProcessHealth):
    """`GET /health/ready` of the ingest API: 200 once Kafka answers, 503 before."""

    status: Literal["ready", "unavailable"]


class ServiceHealth(BaseModel):
    """`GET /health` of a worker process (or of the runner, `run`: the processes it supervises):
    whether it does its job, and the state it does it with."""

    service: Literal["sink", "streams", "notify", "run"]
    status: HealthStatus
    problems: list[str] = Field(default_factory=list)
    details: dict[str, Any] = Field(
        default_factory=dict, description="Per service: partitions owned, lag, pending rows, targets"
    )


class ServiceHealthAnswer(ServiceHealth, ProcessHealth):
    """`GET /health` of a worker process as served: the service's report and the process's facts;
    `checks` holds the service's own (named after it), timed."""


class KafkaHealth(BaseModel):
    reachable: bool
    missing_topics: list[str] = Field(default_factory=list, description="Pipeline topics the broker lacks")
    error: str | None = None


class ClickHouseHealth(BaseModel):
    answers: bool
    via: str = Field(
        description="The sink's query service (embedded chDB) or the server, without credentials"
    )
    error: str | None = None
    sink: ServiceHealth | None = Field(default=None, description="The sink's own report (embedded chDB)")


class GroupLag(BaseModel):
    """Records a consumer group has yet to commit: end offsets minus committed offsets."""

    group: str
    lag: int | None = Field(
        description="Total over the partitions it committed; null before its first commit"
    )
    partitions: dict[str, int] = Field(default_factory=dict, description='"topic[partition]" -> lag')


class DetailedHealth(ProcessHealth):
    """Kafka unreachable or a pipeline topic missing: `unhealthy` (503). ClickHouse not answering,
    the sink's inserts failing, or a group lagging over `COSNAP_HEALTH_MAX_LAG`: `degraded` (200;
    events are still accepted and wait in Kafka). A process of `cosnap-metrics run` waiting to be
    restarted, or the ingest's memory at 90 % of its limit: `degraded` too. Otherwise `healthy`.
    `checks` holds `kafka`, `clickhouse` and (under the runner) `supervisor`."""

    status: HealthStatus
    problems: list[str] = Field(default_factory=list)
    checked_at: datetime = Field(
        description="When the checks ran (the report is reused for COSNAP_HEALTH_CACHE_S)"
    )
    kafka: KafkaHealth
    clickhouse: ClickHouseHealth
    consumer_lag: list[GroupLag]
    supervisor: ServiceHealth | None = Field(
        default=None,
        description="Under `cosnap-metrics run`: the runner's report, each process with its restarts",
    )
