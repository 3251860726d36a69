"""Which tags become dimensions of a series, and how many values each may take.

A series is (project, type, name, currency, dims). Besides the built-in dimensions (`action` of
feature events, `unit` of performance events), the tags a rule names become dimensions. Each
dimension of a (project, type, name) keeps at most `max_values` distinct values; further values
go to the `__overflow__` bucket, so a runaway tag (a user id sent as a tag) cannot exhaust the
worker's memory. The built-in dimensions are capped the same way (a feature's `action` per
feature name, likewise a metric's `unit` and a revenue name's `currency`).

Names are capped too: each (project, type) keeps at most `MAX_NAMES` (setting
`COSNAP_MAX_NAMES_PER_TYPE`) distinct names (revenue name, metric, feature, `funnel:step`); the
events of further names go to the series named `__overflow__` (`__overflow__:__overflow__` for
conversion, so that it keeps the `funnel:step` form), so that a name built from an id (a feature
per user, a metric per request) cannot exhaust it either.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from schemas.event_types import EVENT_KINDS
from schemas.events import EventType, TagKey

OVERFLOW = "__overflow__"
MAX_NAMES = 10_000  # distinct names per project and event type


def overflow_name(kind: str) -> str:
    """The name that the events of a type's names beyond the cap are counted under: `__overflow__`
    for each of the fields that name its series, so that it keeps their form."""
    return ":".join([OVERFLOW] * len(EVENT_KINDS[kind].name))


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
