"""Segment's messages as the pipeline's events (docs/reference.md, "Segment Tracking API").

A track, page or screen message becomes one event item in the shape `POST /v1/events` takes, which
`ingest.batch.parse_events` then validates, places in time and stamps as it does any client's: its
`messageId` is the `event_id` (so a retried message adds nothing), its `timestamp` (else
`originalTimestamp`) is corrected for the client's clock with the message's `sentAt`, else the
batch's. Which type of event a track is, the mapping file says (schemas/segment.py). Identify,
group and alias messages become `TraitsMessage`s under the same clock rule. A message that cannot
be either is rejected on its own with its reason; its neighbours are unaffected.

Numbers arrive as `Decimal`s of their text (ingest.body.decode_exact): an amount is passed on as
that text, so it keeps every digit as sent.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, get_args

import orjson
from pydantic import TypeAdapter, ValidationError

from ingest.batch import ParsedBatch, TimePolicy, event_time, parse_events, parse_sent_at
from ingest.body import dumps_exact, json_path
from ingest.errors import BadRequest
from ingest.reasons import validation_reason
from schemas.events import Rejection
from schemas.numbers import number_text_problem
from schemas.segment import MessageType, SegmentMapping, TraitsMessage, TraitsType, segment_name

MAX_MESSAGE_BYTES = 32 * 1024  # Segment's limit of one message, in a batch or alone
MAX_TAG_VALUE = 200
_MESSAGE_TYPES: tuple[str, ...] = get_args(MessageType)
_TRAITS_TYPES: tuple[str, ...] = get_args(TraitsType)
_TIME = TypeAdapter(datetime)
_EVENT_ID_CHARS = frozenset(chr(c) for c in range(0x21, 0x7F))


class _Refused(Exception):
    """A message that cannot be read; the message is rejected with this reason."""


@dataclass(slots=True)
class Received:
    """What became of a request's messages: its events as `parse_events` took them, its identify,
    group and alias calls, and every rejected message (as sent) with its place and reason."""

    events: ParsedBatch
    traits: list[TraitsMessage] = field(default_factory=list)
    rejected: list[tuple[Rejection, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Step:
    funnel: str
    step: str
    index: int


def _text(value: Any, where: str) -> str | None:
    """A Segment id or name: a string, or a number written as sent; None when absent."""
    if value is None:
        return None
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, str):
        return value
    raise _Refused(f"{where} must be a string")


def _event_id(message_id: str | None) -> str | None:
    """The `event_id` of a `messageId`: itself when it is one (1-64 printable ASCII characters),
    else a digest of it, so that the same message is always the same event."""
    if message_id is None or message_id == "":
        return None
    if len(message_id) <= 64 and set(message_id) <= _EVENT_ID_CHARS:
        return message_id
    return "seg-" + hashlib.sha256(message_id.encode(errors="surrogatepass")).hexdigest()[:40]


def _number(value: Any, negate: bool = False) -> Any:
    """An amount or value as the text that was sent, so that every digit is kept; anything else
    is passed on for the event's model to refuse with its reason."""
    if isinstance(value, str) and negate and number_text_problem(value) is None:
        value = Decimal(value)
    if isinstance(value, Decimal):
        return str(value.copy_negate() if negate else value)  # exact: no context, no rounding
    return value


def _timestamp(value: Any) -> Any:
    """A timestamp for the models: an RFC 3339 string as sent, epoch seconds as a float."""
    return float(value) if isinstance(value, Decimal) else value


def _when(message: dict[str, Any]) -> Any:
    """When the message happened as its client says: `timestamp`, else `originalTimestamp`."""
    timestamp = message.get("timestamp")
    return message.get("originalTimestamp") if timestamp is None else timestamp


def _tag_value(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        value = str(value)
    if isinstance(value, str) and len(value) <= MAX_TAG_VALUE:
        return value
    return None


def _short(value: Any) -> str | None:
    """A context value fit for `release` or `environment` (1-64 characters), else None."""
    return value if isinstance(value, str) and 0 < len(value) <= 64 else None


class SegmentMessages:
    """Reads Segment messages under one mapping; `receive` is called once per request."""

    def __init__(self, mapping: SegmentMapping) -> None:
        self._mapping = mapping
        self._performance = {segment_name(p.event): p for p in mapping.performance}
        self._steps = {
            segment_name(event): _Step(funnel, segment_name(event), index)
            for funnel, events in mapping.funnels.items()
            for index, event in enumerate(events)
        }
        self._refunds = {segment_name(event) for event in mapping.revenue.refunds}

    def receive(
        self,
        messages: list[Any],
        kind: MessageType | None,
        context: Mapping[str, Any],
        sent_at: datetime | None,
        received_at: datetime,
        request_id: str,
        policy: TimePolicy,
    ) -> Received:
        """Read the messages of one request: of type `kind` (a single call) or each of its own
        `type` (a batch), with the batch's `context` under each message's own and `sent_at` for
        the messages without a `sentAt`."""
        items: list[dict[str, Any]] = []
        places: list[tuple[int, Any]] = []  # the place and the message as sent of each item
        item_sent_at: list[datetime | None] = []
        traits: list[TraitsMessage] = []
        rejected: list[tuple[Rejection, Any]] = []
        trait_ids: set[str] = set()
        for index, message in enumerate(messages):
            try:
                message_kind = self._kind(message, kind)
                merged = _merged(message, context)
                own_sent_at = _sent_at(merged.get("sentAt"), sent_at)
                if message_kind in _TRAITS_TYPES:
                    call = self._traits(merged, message_kind, own_sent_at, received_at, request_id, policy)
                    if call.message_id in trait_ids:
                        raise _Refused("duplicate messageId in this batch")
                    trait_ids.add(call.message_id)
                    traits.append(call)
                    continue
                items.append(self._event(merged, message_kind))
            except _Refused as refused:
                rejected.append((Rejection(index=index, reason=str(refused)), message))
                continue
            places.append((index, message))
            item_sent_at.append(own_sent_at)
        events = parse_events(items, None, received_at, request_id, policy, sent_ats=item_sent_at)
        for rejection, _item in events.rejected:
            index, message = places[rejection.index]
            rejected.append((Rejection(index=index, reason=rejection.reason), message))
        rejected.sort(key=lambda pair: pair[0].index)
        return Received(events, traits, rejected)

    @staticmethod
    def _kind(message: Any, kind: MessageType | None) -> str:
        if not isinstance(message, dict):
            raise _Refused("a message must be a JSON object")
        try:
            size = len(dumps_exact(message))
        except orjson.JSONEncodeError as exc:
            raise _Refused("the message nests too deeply") from exc
        if size > MAX_MESSAGE_BYTES:
            raise _Refused(f"message of {size} bytes; at most {MAX_MESSAGE_BYTES} (32 KB)")
        found = kind or message.get("type")
        if found not in _MESSAGE_TYPES:
            raise _Refused("type must be track, page, screen, identify, group or alias")
        return str(found)

    def _event(self, message: dict[str, Any], kind: str) -> dict[str, Any]:
        """The event item of a track, page or screen message (before validation)."""
        properties = message.get("properties")
        if properties is None:
            properties = {}
        if not isinstance(properties, dict):
            raise _Refused("properties must be an object")
        item = self._typed(message, kind, properties)
        item |= _identity(message)
        item["event_id"] = _event_id(_text(message.get("messageId"), "messageId"))
        timestamp = _when(message)
        if timestamp is not None:
            item["timestamp"] = _timestamp(timestamp)
        item["source"] = self._mapping.source
        release = _short(json_path(message, "context", "app", "version"))
        environment = _short(json_path(message, "context", "environment"))
        if release:
            item["release"] = release
        if environment:
            item["environment"] = environment
        item["tags"] = self._tags(message, properties)
        return {key: value for key, value in item.items() if value is not None}

    def _typed(self, message: dict[str, Any], kind: str, properties: dict[str, Any]) -> dict[str, Any]:
        """The fields of the event's type, as the mapping file decides it."""
        feature = self._mapping.feature
        if kind in ("page", "screen"):
            page = _text(message.get("name"), "name") or kind
            action = feature.page_action if kind == "page" else feature.screen_action
            return {"type": "feature", "feature": segment_name(page) or kind, "action": action}
        event = _text(message.get("event"), "event")
        name = segment_name(event or "")
        if not name:
            raise _Refused("event: a track needs the event's name, with a letter or digit")
        performance = self._performance.get(name)
        if performance is not None:
            value = properties.get(performance.property)
            if value is None:
                raise _Refused(f"properties.{performance.property}: required for {performance.metric}")
            return {
                "type": "performance",
                "metric": performance.metric,
                "value": _number(value),
                "unit": performance.unit,
            }
        revenue = self._mapping.revenue
        amount = next((properties[p] for p in revenue.properties if properties.get(p) is not None), None)
        if amount is not None:
            currency = properties.get(revenue.currency_property)
            if currency is None:
                currency = revenue.default_currency
            return {
                "type": "revenue",
                "name": name,
                "amount": _number(amount, negate=name in self._refunds),
                "currency": currency.upper() if isinstance(currency, str) else currency,
            }
        step = self._steps.get(name)
        if step is not None:
            return {"type": "conversion", "funnel": step.funnel, "step": step.step, "step_index": step.index}
        return {"type": "feature", "feature": name, "action": feature.track_action}

    def _tags(self, message: dict[str, Any], properties: dict[str, Any]) -> dict[str, str]:
        tags = {}
        for key, value in (
            ("segment.library", json_path(message, "context", "library", "name")),
            ("segment.library_version", json_path(message, "context", "library", "version")),
            *((key, properties.get(key)) for key in self._mapping.property_tags),
        ):
            text = _tag_value(value)
            if text is not None:
                tags[key] = text
        return tags

    @staticmethod
    def _traits(
        message: dict[str, Any],
        kind: str,
        sent_at: datetime | None,
        received_at: datetime,
        request_id: str,
        policy: TimePolicy,
    ) -> TraitsMessage:
        """The stored form of an identify, group or alias message."""
        ids = _identity(message)
        group_id = _text(message.get("groupId"), "groupId")
        previous_id = _text(message.get("previousId"), "previousId")
        if kind in ("identify", "group") and not ids:
            raise _Refused(f"{kind} needs userId or anonymousId")
        if kind == "group" and not group_id:
            raise _Refused("group needs groupId")
        if kind == "alias" and not (previous_id and ids.get("user_id")):
            raise _Refused("alias needs previousId and userId")
        traits = message.get("traits")
        if traits is not None and not isinstance(traits, dict):
            raise _Refused("traits must be an object")
        context = message.get("context")
        timestamp = _when(message)
        try:
            sent = None if timestamp is None else _TIME.validate_python(_timestamp(timestamp))
        except ValidationError as exc:
            raise _Refused(f"timestamp: {validation_reason(exc)}") from exc
        if sent is not None and sent.tzinfo is None:
            raise _Refused("timestamp needs a UTC offset")
        skew = received_at - sent_at if sent_at is not None and sent is not None else timedelta(0)
        placed = event_time(sent, skew, received_at, policy)
        if isinstance(placed, str):
            raise _Refused(placed)
        try:
            return TraitsMessage(
                message_id=_event_id(_text(message.get("messageId"), "messageId")) or uuid.uuid4().hex,
                type=kind,  # type: ignore[arg-type]  # one of _TRAITS_TYPES
                timestamp=placed,
                received_at=received_at,
                request_id=request_id,
                group_id=group_id,
                previous_id=previous_id,
                traits=dumps_exact(traits or {}).decode(),
                context=dumps_exact(context if isinstance(context, dict) else {}).decode(),
                **ids,
            )
        except ValidationError as exc:
            raise _Refused(validation_reason(exc)) from exc


def _identity(message: dict[str, Any]) -> dict[str, str]:
    ids = {
        "user_id": _text(message.get("userId"), "userId"),
        "anonymous_id": _text(message.get("anonymousId"), "anonymousId"),
    }
    return {key: value for key, value in ids.items() if value}


def _merged(message: dict[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
    """The message with the batch's context under its own (its own keys win)."""
    own = message.get("context")
    if not context or (own is not None and not isinstance(own, dict)):
        return message
    return message | {"context": {**context, **(own or {})}}


def _sent_at(value: Any, batch_sent_at: datetime | None) -> datetime | None:
    """The client's clock when it sent the message: its own `sentAt`, else the batch's."""
    if value is None:
        return batch_sent_at
    try:
        return parse_sent_at(value, "sentAt")
    except BadRequest as exc:
        raise _Refused(exc.reason) from exc
