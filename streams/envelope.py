"""The worker's view of an events record: the envelope the ingest writes, decoded into structs.

The ingest validated every event (schemas/events.py) before writing it, so the worker reads only
the fields windows and alert rules use, with msgspec: it decodes straight into these structs and
skips every other field without building a string for it (faster than `orjson.loads` into
dicts: BENCHMARKS.md, docs/findings.md), and the hot loops read attributes instead of
looking up dict keys. Structs are exempt from the cyclic garbage collector (they hold no
cycles). A dead-letter record needs an event whole, with its request id: `raw_events` decodes
the record again for those (refused events are rare).

Each struct holds at least the fields the table of event types (schemas/event_types.py) names for
its type; tests/schemas/test_event_types.py checks that they agree.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, ClassVar

import msgspec
import orjson

# The ingest's bounds (schemas/events.py): a record written past it with longer strings is not an
# envelope the worker folds (a 2 MB feature name would become a series and a window row).
Name = Annotated[str, msgspec.Meta(max_length=128)]
TagKey = Annotated[str, msgspec.Meta(max_length=64)]
TagValue = Annotated[str, msgspec.Meta(max_length=200)]


class WireEvent(msgspec.Struct, tag_field="type", kw_only=True, gc=False):
    """Fields every event type has. `kind` is the event's `type` (the struct's tag).

    `event_id` is the idempotency key (the ingest always sets it; an event without one is
    refused by the windows); `received_at` is read for the late-events table; `user_id` for the
    users an alert affects (streams/alerts.py)."""

    kind: ClassVar[str]
    timestamp: Annotated[str, msgspec.Meta(max_length=64)]
    event_id: Annotated[str, msgspec.Meta(max_length=64)] = ""
    received_at: Annotated[str, msgspec.Meta(max_length=64)] = ""
    tags: Annotated[dict[TagKey, TagValue], msgspec.Meta(max_length=32)] = {}
    source: str | None = None
    user_id: Annotated[str, msgspec.Meta(max_length=256)] | None = None


class Performance(WireEvent, tag="performance", kw_only=True, gc=False):
    kind: ClassVar[str] = "performance"
    metric: Name
    value: float
    unit: Name


class Feature(WireEvent, tag="feature", kw_only=True, gc=False):
    kind: ClassVar[str] = "feature"
    feature: Name
    action: Name


class Conversion(WireEvent, tag="conversion", kw_only=True, gc=False):
    kind: ClassVar[str] = "conversion"
    funnel: Name
    step: Name
    step_index: int | None = None


class Revenue(WireEvent, tag="revenue", kw_only=True, gc=False):
    kind: ClassVar[str] = "revenue"
    name: Name
    amount: Decimal
    currency: Name


Event = Performance | Feature | Conversion | Revenue
EVENT_TYPES: tuple[type[WireEvent], ...] = (Performance, Feature, Conversion, Revenue)


class EnvelopeView(msgspec.Struct, gc=False):
    """An events record as the worker reads it (the record itself is schemas.records.Envelope)."""

    project: str
    events: list[Event]


_decoder = msgspec.json.Decoder(EnvelopeView)


def decode(value: bytes) -> EnvelopeView:
    """The envelope of an events record; raises msgspec.DecodeError for one the ingest would
    never write."""
    return _decoder.decode(value)


def raw_events(value: bytes) -> list[dict[str, Any]]:
    """Every event of an envelope as the ingest wrote it, in order (for dead-letter records)."""
    events: list[dict[str, Any]] = orjson.loads(value)["events"]
    return events
