"""From a decoded body to accepted events: per-item validation, clock-skew correction, rejects.

Timestamp policy: with a batch `sent_at`, an event's time is corrected for the client's clock,
`ts = received_at - (sent_at - timestamp)`; without it, `timestamp` is taken as sent; without a
timestamp, the receive time is used. The result is kept at millisecond precision in UTC and
must lie within [received_at - max_event_age, received_at + max_future_skew], else the event is
rejected with the reason `timestamp too far in the future` / `timestamp too old`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from pydantic import TypeAdapter, ValidationError

from ingest.body import Unparseable, dumps_exact
from ingest.errors import BadRequest, PayloadTooLarge
from ingest.reasons import MAX_NAME_CHARS, readable, validation_reason
from schemas.event_types import spread_name
from schemas.events import MAX_BATCH_EVENTS, Event, Rejection
from schemas.records import DEAD_LETTER_RAW_BYTES

_EVENT = TypeAdapter[Event](Event)
_SENT_AT = TypeAdapter(datetime)


@dataclass(frozen=True, slots=True)
class TimePolicy:
    max_future_skew: timedelta
    max_event_age: timedelta


@dataclass(slots=True)
class ParsedBatch:
    """The accepted events, each serialised with its server fields, and the rejects with their
    raw items (for the dead-letter topic)."""

    accepted: list[bytes] = field(default_factory=list)
    # Of each accepted event, its series' part of the Kafka key (schemas.event_types.spread_name).
    names: list[str] = field(default_factory=list)
    rejected: list[tuple[Rejection, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class BodyParts:
    items: list[Any]
    sent_at: datetime | None
    api_key: str | None


def split_body(payload: Any, scanned_items: list[Any] | None = None) -> BodyParts:
    """The items, `sent_at` and `api_key` of a single-event or batch body; 400/413 if neither.
    `scanned_items` replaces `payload["events"]` when the body had to be split item by item."""
    if not isinstance(payload, dict):
        raise BadRequest('body must be an event object or {"events": [...]}')
    api_key = payload.get("api_key")
    if api_key is not None and not isinstance(api_key, str):
        raise BadRequest("api_key must be a string")
    if "events" not in payload:
        return BodyParts([{k: v for k, v in payload.items() if k != "api_key"}], None, api_key)
    unknown = set(payload) - {"events", "sent_at", "api_key"}
    if unknown:
        names = ", ".join(readable(name, MAX_NAME_CHARS) for name in sorted(unknown)[:5])
        raise BadRequest(f"unknown batch fields: {names}" + (" …" if len(unknown) > 5 else ""))
    items = scanned_items if scanned_items is not None else payload["events"]
    if not isinstance(items, list) or not items:
        raise BadRequest("events must be a non-empty array")
    if len(items) > MAX_BATCH_EVENTS:
        raise PayloadTooLarge(f"batch of {len(items)} events; at most {MAX_BATCH_EVENTS} per request")
    return BodyParts(items, parse_sent_at(payload.get("sent_at")), api_key)


def parse_sent_at(value: Any, name: str = "sent_at") -> datetime | None:
    """The client's clock when it sent a batch (None when not sent); 400 unless it is an RFC 3339
    timestamp with an offset. `name` is the field as the client calls it."""
    if value is None:
        return None
    try:
        sent_at = _SENT_AT.validate_python(value)
    except ValidationError as exc:
        raise BadRequest(f"{name} must be an RFC 3339 timestamp") from exc
    if sent_at.tzinfo is None:
        raise BadRequest(f"{name} needs a UTC offset")
    return sent_at


def _iso_ms(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_time(
    timestamp: datetime | None, skew: timedelta, received_at: datetime, policy: TimePolicy
) -> datetime | str:
    """The time of an event sent with `timestamp` by a client whose clock is `skew` behind the
    server's (received_at - sent_at), or why it has none (the reason of its rejection)."""
    try:
        ts = received_at if timestamp is None else timestamp + skew
    except OverflowError:  # a clock thousands of years off: no correction can place it
        return "timestamp out of range"
    if ts > received_at + policy.max_future_skew:
        return "timestamp too far in the future"
    if ts < received_at - policy.max_event_age:
        return "timestamp too old"
    return ts


def parse_events(
    items: list[Any],
    sent_at: datetime | None,
    received_at: datetime,
    request_id: str,
    policy: TimePolicy,
    *,
    sent_ats: Sequence[datetime | None] | None = None,
) -> ParsedBatch:
    """Validate each item on its own so a bad one never costs its neighbours. `sent_ats`, when
    given, is each item's own `sent_at` (Segment's messages may each carry one)."""
    batch = ParsedBatch()
    seen_ids: set[str] = set()
    received = _iso_ms(received_at)
    for index, item in enumerate(items):
        item_sent_at = sent_at if sent_ats is None else sent_ats[index]
        skew = received_at - item_sent_at if item_sent_at is not None else timedelta(0)
        if isinstance(item, Unparseable):
            batch.rejected.append((Rejection(index=index, reason=readable(item.reason)), item))
            continue
        try:
            event = _EVENT.validate_python(item)
        except ValidationError as exc:
            batch.rejected.append((Rejection(index=index, reason=validation_reason(exc)), item))
            continue
        event_id = event.event_id or uuid.uuid4().hex
        if event_id in seen_ids:
            batch.rejected.append((Rejection(index=index, reason="duplicate event_id in this batch"), item))
            continue
        ts = event_time(event.timestamp, skew, received_at, policy)
        if isinstance(ts, str):
            batch.rejected.append((Rejection(index=index, reason=ts), item))
            continue
        seen_ids.add(event_id)
        wire = event.model_dump(mode="json", exclude_none=True)
        wire["event_id"] = event_id
        wire["timestamp"] = _iso_ms(ts)
        wire["received_at"] = received
        wire["request_id"] = request_id
        batch.accepted.append(orjson.dumps(wire))
        batch.names.append(spread_name(event))
    return batch


def dead_letter_raw(item: Any) -> str:
    """The rejected item as text, capped so one huge item cannot bloat the dead-letter topic."""
    if isinstance(item, Unparseable):
        return item.raw
    try:
        raw = dumps_exact(item).decode()
    except (TypeError, orjson.JSONEncodeError):
        raw = repr(item)
    return raw[:DEAD_LETTER_RAW_BYTES]
