"""Which tags become dimensions of a series, and how many values each may take.

A series is (project, type, name, currency, dims). Besides the built-in dimensions (`action` of
feature events, `unit` of performance events), the tags a rule names become dimensions. Each
dimension of a (project, type, name) keeps at most `max_values` distinct values; further values
go to the `__overflow__` bucket, so a runaway tag (a user id sent as a tag) cannot exhaust the
worker's memory.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from schemas.events import EventType, TagKey

OVERFLOW = "__overflow__"


class DimensionRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: EventType | None = Field(
        default=None, description="Event type the rule applies to; any when absent"
    )
    name: str = Field(default="*", description="Shell pattern on the series name (metric, feature, ...)")
    tags: tuple[TagKey, ...] = Field(description="Tag keys that become dimensions, in this order")


class SeriesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: tuple[DimensionRule, ...] = Field(description="Every matching rule contributes its tags")
    max_values: int = Field(default=200, gt=0, description="Distinct values per dimension of a name")


# The app's own dimensions: latency per route, status and provider; errors by category; revenue
# by plan and store. Enough for the dashboards and the alert rules; anything else stays in tags.
DEFAULT_SERIES = SeriesConfig(
    rules=(
        DimensionRule(type="performance", tags=("route", "status", "provider", "category")),
        DimensionRule(type="revenue", tags=("plan", "store", "status")),
        DimensionRule(type="feature", tags=("status",)),
    )
)
