"""The monitoring guide's wire format (docs/reference.md, "The monitoring guide's metrics"): what
an app's `BusinessMetricsService` posts to `/api/analytics/metrics`, and how its four kinds of
objects become the pipeline's four event types.

The ingest reads each object on its own (ingest/guide_metrics.py): an object of the wrong shape
is rejected with its reason and costs nothing to its neighbours. These models state the shapes
for the OpenAPI document and the JSON Schema of `schemas/json/`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.events import MAX_BATCH_EVENTS, EventId

GuideType = Literal["revenue", "conversion", "feature_usage", "feature", "performance"]
# The guide's type -> the pipeline's event type.
GUIDE_EVENT_TYPES: dict[str, str] = {
    "revenue": "revenue",
    "conversion": "conversion",
    "feature_usage": "feature",
    "feature": "feature",
    "performance": "performance",
}
DEFAULT_CURRENCY = "USD"
DEFAULT_UNIT = "ms"
DEFAULT_FUNNEL = "default"
# The metadata key that names a conversion's funnel (it is not kept as a tag).
FUNNEL_KEY = "funnel"
# The prefix of an event_id the ingest derives from an object that carries none.
DERIVED_ID_PREFIX = "gm-"


class _GuideMetricDoc(BaseModel):
    model_config = ConfigDict(extra="allow")

    timestamp: str | float | None = Field(
        default=None,
        description="RFC 3339 with an offset, or Unix time (a number above 2e10 is milliseconds, "
        "as Date.now() gives); the receive time when absent",
    )
    metadata: dict[str, Any] | None = Field(
        default=None,
        description="Kept as tags: strings, numbers and booleans of at most 200 characters under "
        "keys ^[A-Za-z0-9_.:-]+$, at most 32; the rest is dropped and counted",
    )
    eventId: EventId | None = Field(
        default=None,
        description="The idempotency key; when absent, derived from the object when it has a timestamp",
    )


class GuideRevenueDoc(_GuideMetricDoc):
    type: Literal["revenue"]
    eventType: str = Field(description="the revenue event's name (`name`)", examples=["subscription"])
    amount: str | float = Field(description="a decimal; every digit of a JSON number is kept")
    currency: str = Field(default=DEFAULT_CURRENCY, description="ISO 4217, any case")


class GuideConversionDoc(_GuideMetricDoc):
    type: Literal["conversion"]
    step: str = Field(examples=["photo_uploaded"])
    userId: str | None = Field(description="required by conversion events (`user_id`)")


class GuideFeatureUsageDoc(_GuideMetricDoc):
    type: Literal["feature_usage", "feature"]
    feature: str = Field(examples=["ai_effect.anime"])
    action: str = Field(examples=["applied"])
    userId: str | None = None


class GuidePerformanceDoc(_GuideMetricDoc):
    type: Literal["performance"]
    metricName: str = Field(description="the measurement's name (`metric`)", examples=["api.latency"])
    value: float | str
    unit: str = Field(default=DEFAULT_UNIT, description="ms, s, bytes, count, percent or another short unit")


GuideMetricDoc = Annotated[
    GuideRevenueDoc | GuideConversionDoc | GuideFeatureUsageDoc | GuidePerformanceDoc,
    Field(discriminator="type"),
]


class GuideMetricsDoc(BaseModel):
    """The body of `POST /api/analytics/metrics` (and `/v1/compat/analytics/metrics`)."""

    model_config = ConfigDict(extra="allow")

    metrics: list[GuideMetricDoc] = Field(min_length=1, max_length=MAX_BATCH_EVENTS)
    api_key: str | None = Field(default=None, description="Write key for navigator.sendBeacon bodies.")
