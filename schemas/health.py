"""Health reports: `GET /health/detailed` of the ingest API and `GET /health` of the sink, the
streams worker and the notifier (docs/reference.md, "Health"). The ingest API reads the sink's
report, so both ends share these models.

Every report answers 200 when `healthy` or `degraded` and 503 when `unhealthy`; `problems` says
in words what made it less than healthy.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

HealthStatus = Literal["healthy", "degraded", "unhealthy"]


def http_status(status: HealthStatus) -> int:
    """The HTTP status of a report: load balancers and orchestrators act on it, not on the body."""
    return 503 if status == "unhealthy" else 200


class ServiceHealth(BaseModel):
    """`GET /health` of a worker process (or of the runner, `run`: the processes it supervises):
    whether it does its job, and the state it does it with."""

    service: Literal["sink", "streams", "notify", "run"]
    status: HealthStatus
    problems: list[str] = Field(default_factory=list)
    details: dict[str, Any] = Field(
        default_factory=dict, description="Per service: partitions owned, lag, pending rows, targets"
    )


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


class MemoryHealth(BaseModel):
    rss_bytes: int = Field(description="Resident memory of the ingest process")


class DetailedHealth(BaseModel):
    """Kafka unreachable or a pipeline topic missing: `unhealthy` (503). ClickHouse not answering,
    the sink's inserts failing, or a group lagging over `COSNAP_HEALTH_MAX_LAG`: `degraded` (200;
    events are still accepted and wait in Kafka). A process of `cosnap-metrics run` waiting to be
    restarted: `degraded` too. Otherwise `healthy`."""

    status: HealthStatus
    problems: list[str] = Field(default_factory=list)
    checked_at: datetime
    kafka: KafkaHealth
    clickhouse: ClickHouseHealth
    consumer_lag: list[GroupLag]
    memory: MemoryHealth
    supervisor: ServiceHealth | None = Field(
        default=None,
        description="Under `cosnap-metrics run`: the runner's report, each process with its restarts",
    )
