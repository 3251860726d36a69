"""Kafka records: the envelope on `metrics.events.v1`, final windows on `metrics.aggregates.v1`,
rejects on `metrics.dead-letter.v1`. Values are JSON; decimals travel as strings."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from schemas.events import Event, EventType

Granularity = Literal["10s", "1m", "1h"]
GRANULARITY_SECONDS: dict[Granularity, int] = {"10s": 10, "1m": 60, "1h": 3600}


class Envelope(BaseModel):
    """One Kafka record carrying many validated events of one project.

    Faust spends ~200 µs per record, so records carry events by the hundred. Every event in an
    envelope has `event_id` and a skew-corrected `timestamp` set by the ingest API.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1
    project: str
    request_id: str
    received_at: AwareDatetime
    events: list[Event] = Field(min_length=1)


class WindowAggregate(BaseModel):
    """A final (closed) window of one series; key = `series_id|granularity|window_start`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1
    project: str
    type: EventType
    name: str = Field(description="revenue name, metric, feature, or funnel:step")
    currency: str = Field(default="", description="ISO 4217 code for revenue series, else empty")
    dims: dict[str, str] = Field(default_factory=dict)
    series_id: str
    granularity: Granularity
    window_start: datetime
    window_end: datetime
    count: int
    sum: Decimal
    min: Decimal
    max: Decimal
    emitted_at: datetime


class DeadLetter(BaseModel):
    """Input that was not accepted, with the reason, for inspection and replay."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1
    project: str | None
    request_id: str
    received_at: datetime
    index: int | None = Field(description="Position in the batch; null when the whole body was rejected")
    reason: str
    raw: str = Field(description="The rejected item as received, capped in size")
