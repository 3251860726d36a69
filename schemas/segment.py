"""Segment's Tracking API on the ingest (docs/reference.md, "Segment Tracking API"): how its
messages become the pipeline's events (the mapping file), and the record that carries its
identify, group and alias calls (`metrics.traits.v1`).

The mapping is a YAML file (`COSNAP_SEGMENT_MAPPING_FILE`, `segment-mapping.yaml` beside this
module by default). Event names are matched as `segment_name` spells them, so `Order Completed`,
`order completed` and `order_completed` are one name.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer, model_validator

from schemas.currencies import ISO_4217
from schemas.errors import CosnapError
from schemas.events import EventId, Name, Source, TagKey, Unit

DEFAULT_SEGMENT_MAPPING = Path(__file__).parent / "segment-mapping.yaml"
MessageType = Literal["track", "page", "screen", "identify", "group", "alias"]
TraitsType = Literal["identify", "group", "alias"]
_NOT_IN_NAMES = re.compile(r"[^a-z0-9_.:/-]+")


def segment_name(text: str) -> str:
    """A Segment event name as the pipeline's names are written: lower case, each run of other
    characters (spaces, punctuation, non-ASCII letters) one `_`, starting with a letter or digit:
    `Order Completed` is `order_completed`. Empty when nothing of `text` is left."""
    return _NOT_IN_NAMES.sub("_", text.lower()).lstrip("_.:/-").rstrip("_")


class RevenueMapping(BaseModel):
    """Which tracks are revenue: those with one of `properties` (the first present is the amount)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    properties: list[str] = Field(default=["revenue", "total"], min_length=1)
    currency_property: str = "currency"
    default_currency: str = "USD"
    refunds: list[str] = Field(
        default=["Order Refunded"], description="tracks whose amount counts negatively"
    )

    @model_validator(mode="after")
    def _iso_currency(self) -> RevenueMapping:
        if self.default_currency not in ISO_4217:
            raise ValueError(f"default_currency {self.default_currency!r} is not an ISO 4217 code")
        return self


class PerformanceMapping(BaseModel):
    """A track that is a performance value: `metric` is `properties[property]` in `unit`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event: str = Field(min_length=1)
    metric: Name
    property: str = Field(min_length=1)
    unit: Unit


class FeatureMapping(BaseModel):
    """The action of the feature event of every other track, page and screen."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    track_action: Name = "tracked"
    page_action: Name = "viewed"
    screen_action: Name = "viewed"


class SegmentMapping(BaseModel):
    """How Segment messages become events; see the default file for what each part means."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Source = "segment"
    revenue: RevenueMapping = Field(default_factory=RevenueMapping)
    funnels: dict[Name, list[str]] = Field(default_factory=dict)
    performance: list[PerformanceMapping] = Field(default_factory=list)
    feature: FeatureMapping = Field(default_factory=FeatureMapping)
    property_tags: list[TagKey] = Field(default_factory=list, max_length=16)

    @model_validator(mode="after")
    def _names_once(self) -> SegmentMapping:
        seen: dict[str, str] = {}
        named = [(f"funnel {f}", e) for f, events in self.funnels.items() for e in events]
        named += [(f"performance {p.metric}", p.event) for p in self.performance]
        for where, event in named:
            name = segment_name(event)
            if not name:
                raise ValueError(f"{where}: event {event!r} has no letter or digit")
            if name in seen:
                raise ValueError(f"{where}: event {event!r} is also in {seen[name]}")
            seen[name] = where
        return self


class SegmentMappingError(CosnapError):
    """A mapping file that cannot be read or does not validate."""


def load_segment_mapping(path: Path = DEFAULT_SEGMENT_MAPPING) -> SegmentMapping:
    try:
        return SegmentMapping.model_validate(yaml.safe_load(path.read_text()))
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise SegmentMappingError(f"{path}: {exc}") from exc


class TraitsMessage(BaseModel):
    """An identify, group or alias call as stored: who it names and the traits it sets."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    message_id: EventId
    type: TraitsType
    timestamp: datetime = Field(description="skew-corrected as an event's, UTC, milliseconds")
    received_at: datetime
    request_id: str
    user_id: str | None = Field(default=None, max_length=256)
    anonymous_id: str | None = Field(default=None, max_length=256)
    group_id: str | None = Field(default=None, max_length=256, description="group calls")
    previous_id: str | None = Field(default=None, max_length=256, description="alias calls")
    traits: str = Field(description="the call's traits, a JSON object with numbers as sent")
    context: str = Field(description="the call's context, a JSON object")

    @field_serializer("timestamp", "received_at")
    def _iso_milliseconds(self, value: datetime) -> str:
        return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TraitsRecord(BaseModel):
    """One Kafka record of `metrics.traits.v1` (key: project): the identify, group and alias
    calls of one request, written before the request is answered."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1
    project: str
    messages: list[TraitsMessage] = Field(min_length=1)


class SegmentRejection(BaseModel):
    index: int = Field(description="the message's place in the batch (0 for a single call)")
    reason: str


class SegmentResponse(BaseModel):
    """Segment's answer (`success`), and what became of each message."""

    success: Literal[True] = True
    accepted: int = Field(description="messages stored: events, and identify, group and alias calls")
    rejected: list[SegmentRejection] = Field(description="messages refused one by one, dead-lettered")


class SegmentError(BaseModel):
    """A request refused as a whole, in Segment's shape (its libraries read `code` and `message`)."""

    success: Literal[False] = False
    code: str
    message: str


class SegmentMessageDoc(BaseModel):
    """A message of the Tracking API, for the OpenAPI document; the ingest reads each one on its
    own (a field of the wrong type refuses that message only)."""

    model_config = ConfigDict(extra="allow")

    type: MessageType | None = Field(default=None, description="in a batch; a single call's path says it")
    messageId: str | None = Field(default=None, description="the idempotency key (event_id)")
    userId: str | None = None
    anonymousId: str | None = None
    event: str | None = Field(default=None, description="track: the event's name")
    name: str | None = Field(default=None, description="page, screen: the page's name")
    properties: dict[str, Any] | None = None
    traits: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    groupId: str | None = None
    previousId: str | None = None
    timestamp: str | None = None
    originalTimestamp: str | None = None
    sentAt: str | None = None
    writeKey: str | None = None


class SegmentBatchDoc(BaseModel):
    """`POST /v1/batch` (and `/v1/import`), for the OpenAPI document."""

    model_config = ConfigDict(extra="allow")

    batch: list[SegmentMessageDoc]
    sentAt: str | None = None
    context: dict[str, Any] | None = None
    writeKey: str | None = None
