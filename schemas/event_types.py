"""The event types in one table: for each, its model, the fields that name its series and split
them, the field its windows sum, and whether they keep percentiles.

The worker's series, windows, late events and alert rules (streams/) and the sink's event columns
(sinks/clickhouse/rows.py) read the table instead of branching on the type each in its own way.
tests/schemas/test_event_types.py checks that the models, the JSON Schemas, the worker's structs
(streams/envelope.py) and the ClickHouse columns agree with it, so a new type fails a test until
every place knows it.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass

from schemas.events import (
    ConversionEvent,
    Event,
    EventBase,
    EventType,
    FeatureEvent,
    PerformanceEvent,
    RevenueEvent,
)


@dataclass(frozen=True, slots=True)
class EventKind:
    """One event type. A series of it is (project, type, name, currency, dims): `name` joins the
    values of the `name` fields with ":"; the `dimension` field's value is a built-in dimension
    of the series (in `dims`), the `currency` field's value its currency; either splits the series
    of a name, its values capped per name like a tag dimension's."""

    type: EventType
    model: builtins.type[EventBase]  # `type` names the event type here
    name: tuple[str, ...]
    dimension: str | None = None
    currency: str | None = None
    value: str | None = None  # what a window sums, takes the min and max of; None: each event counts 1
    exact: bool = False  # the value is a decimal, summed exactly as sent; else a float measurement
    sketched: bool = False  # its windows keep a DDSketch of the values, for percentiles

    @property
    def fields(self) -> tuple[str, ...]:
        """Its own fields, beyond those every event has, in the model's order."""
        common = EventBase.model_fields
        return tuple(field for field in self.model.model_fields if field not in common and field != "type")

    @property
    def split(self) -> str | None:
        """The field that splits the series of a name: its dimension or its currency."""
        return self.dimension or self.currency

    @property
    def key(self) -> tuple[str, ...]:
        """The fields whose values find an event's series, tags aside: its name fields, then the
        field that splits them. Two for every type: the worker's index of names is two deep."""
        return self.name if self.split is None else (*self.name, self.split)


def spread_name(event: Event) -> str:
    """What follows `project|` in the Kafka key of `event` when envelopes are keyed by series
    (`COSNAP_EVENTS_KEY=series`): `type|name`, where `name` is the value of the type's first name
    field (a revenue name, a funnel, a feature, a metric). Every copy of an event gets the same
    key, so the same partition; a name keeps its currencies, actions, units and tag values on one
    partition (their caps are per name), and a funnel its steps (their ratios are per funnel)."""
    return f"{event.type}|{getattr(event, EVENT_KINDS[event.type].name[0])}"


EVENT_KINDS: dict[str, EventKind] = {
    kind.type: kind
    for kind in (
        EventKind("revenue", RevenueEvent, name=("name",), currency="currency", value="amount", exact=True),
        EventKind("conversion", ConversionEvent, name=("funnel", "step")),
        EventKind("feature", FeatureEvent, name=("feature",), dimension="action"),
        EventKind(
            "performance", PerformanceEvent, name=("metric",), dimension="unit", value="value", sketched=True
        ),
    )
}
