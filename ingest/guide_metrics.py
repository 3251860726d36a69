"""The monitoring guide's wire format on the ingest (docs/reference.md, "The monitoring guide's
metrics"), so that an app whose `BusinessMetricsService` posts `{"metrics": [...]}` to
`/api/analytics/metrics` sends its events here by changing the host.

Each object of `metrics` becomes one event item in the shape `POST /v1/events` takes (the
mapping of `schemas/guide.py`), which `ingest.batch.parse_events` then validates, places in time
and stamps as it does any client's; the request then goes the way of `/v1/events` (write keys,
origins, rate limits, Kafka, dead letters, 202 / 400 with per-item reasons). `metadata` becomes
tags within the tag limits; what does not fit, and unknown fields, are dropped and counted
(`cosnap_ingest_guide_dropped_total`), never refused. An object without `eventId` but with a
`timestamp` gets an `event_id` derived from its content, so that a client's retry of the same
body adds nothing.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import TypeAdapter, ValidationError

from ingest.batch import ParsedBatch, TimePolicy, parse_events
from ingest.body import decode_exact, dumps_exact
from ingest.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from ingest.intake import IngestState, read_write_request, write_responses
from ingest.metrics import GUIDE_DROPPED, GuideDropReason
from schemas.events import (
    MAX_BATCH_EVENTS,
    MAX_TAGS,
    IngestResponse,
    Rejection,
    TagKey,
    TagValue,
)
from schemas.guide import (
    DEFAULT_CURRENCY,
    DEFAULT_FUNNEL,
    DEFAULT_UNIT,
    DERIVED_ID_PREFIX,
    FUNNEL_KEY,
    GUIDE_EVENT_TYPES,
    GuideConversionDoc,
    GuideFeatureUsageDoc,
    GuideMetricsDoc,
    GuidePerformanceDoc,
    GuideRevenueDoc,
)

GUIDE_PATHS = ("/api/analytics/metrics", "/v1/compat/analytics/metrics")
_COMMON = frozenset({"type", "timestamp", "metadata", "eventId"})
# The guide's fields of each event type -> the event's fields.
_FIELDS: dict[str, dict[str, str]] = {
    "revenue": {"eventType": "name", "amount": "amount", "currency": "currency"},
    "conversion": {"step": "step", "userId": "user_id"},
    "feature": {"feature": "feature", "action": "action", "userId": "user_id"},
    "performance": {"metricName": "metric", "value": "value", "unit": "unit"},
}
# An event's field, as the guide calls it, in a rejection's reason.
_GUIDE_NAMES = {event: guide for fields in _FIELDS.values() for guide, event in fields.items()}
_GUIDE_NAMES |= {"event_id": "eventId", "tags": "metadata"}
_TAG_KEY = TypeAdapter[str](TagKey)
_TAG_VALUE = TypeAdapter[str](TagValue)


class _Refused(Exception):
    """An object that cannot be an event; it is rejected with this reason."""


@dataclass(slots=True)
class GuideBatch:
    """What became of a request's objects: the events as `parse_events` took them, every
    rejected object (as sent) with its place and reason, and what each accepted object lost."""

    events: ParsedBatch
    rejected: list[tuple[Rejection, Any]] = field(default_factory=list)
    dropped: Counter[GuideDropReason] = field(default_factory=Counter)


def derived_event_id(project: str, metric: dict[str, Any]) -> str:
    """The `event_id` of an object that carries none: `gm-` and 40 hex digits of the SHA-256 of
    the project and the object's canonical JSON (keys sorted, numbers as sent). The same object
    sent again is the same event; two identical objects (same fields, same timestamp) are one."""
    canonical = dumps_exact(metric, sort_keys=True)
    return DERIVED_ID_PREFIX + hashlib.sha256(project.encode() + b"\n" + canonical).hexdigest()[:40]


def _as_sent(value: Any) -> Any:
    """A number as the text that was sent (a `Decimal` of `decode_exact`), so every digit is
    kept; anything else is passed on for the event's model to refuse with its reason."""
    return str(value) if isinstance(value, Decimal) else value


def _tags(metadata: Any, dropped: Counter[GuideDropReason]) -> dict[str, str]:
    """`metadata` as tags: scalar values under valid keys, at most MAX_TAGS; the rest counted."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        dropped["bad_metadata"] += 1
        return {}
    tags: dict[str, str] = {}
    for key, value in metadata.items():
        reason = _tag_problem(key, value)
        if reason is None and len(tags) >= MAX_TAGS:
            reason = "too_many_tags"
        if reason is not None:
            dropped[reason] += 1
            continue
        tags[key] = _text(value)
    return tags


def _text(value: str | bool | Decimal) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _tag_problem(key: str, value: Any) -> GuideDropReason | None:
    if value is None:
        return "null_value"
    if isinstance(value, dict | list):
        return "nested_value"
    try:
        _TAG_KEY.validate_python(key)
    except ValidationError:
        return "bad_key"
    try:
        _TAG_VALUE.validate_python(_text(value))
    except ValidationError:
        return "long_value"
    return None


def _guide_reason(reason: str) -> str:
    """A rejection's reason with the event's field names written as the guide's."""
    parts = []
    for part in reason.split("; "):
        name, dot, rest = part.partition(".")
        if dot and name in _GUIDE_NAMES:
            part = f"{_GUIDE_NAMES[name]}.{rest}"
        else:
            name, colon, rest = part.partition(":")
            if colon and name in _GUIDE_NAMES:
                part = f"{_GUIDE_NAMES[name]}:{rest}"
        parts.append(part)
    return "; ".join(parts)


class GuideMetrics:
    """Reads the guide's objects as events; `receive` is called once per request."""

    def receive(
        self, metrics: list[Any], project: str, received_at: datetime, request_id: str, policy: TimePolicy
    ) -> GuideBatch:
        """Map each object, then validate the items together as `/v1/events` does."""
        items: list[dict[str, Any]] = []
        places: list[tuple[int, Any, Counter[GuideDropReason]]] = []
        rejected: list[tuple[Rejection, Any]] = []
        for index, metric in enumerate(metrics):
            dropped: Counter[GuideDropReason] = Counter()
            try:
                items.append(self._event(metric, project, dropped))
            except _Refused as refused:
                rejected.append((Rejection(index=index, reason=str(refused)), metric))
                continue
            places.append((index, metric, dropped))
        events = parse_events(items, None, received_at, request_id, policy)
        refused_places = set()
        for rejection, _item in events.rejected:
            index, metric, _dropped = places[rejection.index]
            refused_places.add(rejection.index)
            rejected.append((Rejection(index=index, reason=_guide_reason(rejection.reason)), metric))
        rejected.sort(key=lambda pair: pair[0].index)
        batch = GuideBatch(events, rejected)
        for place, (_index, _metric, dropped) in enumerate(places):
            if place not in refused_places:
                batch.dropped.update(dropped)
        return batch

    @staticmethod
    def _event(metric: Any, project: str, dropped: Counter[GuideDropReason]) -> dict[str, Any]:
        """The event item of one object (before validation)."""
        if not isinstance(metric, dict):
            raise _Refused("a metric must be a JSON object")
        kind = metric.get("type")
        event_type = GUIDE_EVENT_TYPES.get(kind) if isinstance(kind, str) else None
        if event_type is None:
            raise _Refused("type must be revenue, conversion, feature_usage or performance")
        fields = _FIELDS[event_type]
        item: dict[str, Any] = {"type": event_type}
        for guide_name, event_name in fields.items():
            item[event_name] = _as_sent(metric.get(guide_name))
        dropped["unknown_field"] += len(set(metric) - _COMMON - set(fields))
        metadata = metric.get("metadata")
        if event_type == "revenue":
            currency = item["currency"]
            item["currency"] = DEFAULT_CURRENCY if currency is None else currency
            if isinstance(currency, str):
                item["currency"] = currency.upper()
        elif event_type == "performance" and item["unit"] is None:
            item["unit"] = DEFAULT_UNIT
        elif event_type == "conversion":
            if item["user_id"] is None:
                raise _Refused("userId: required by a conversion")
            funnel = metadata.get(FUNNEL_KEY) if isinstance(metadata, dict) else None
            item["funnel"] = DEFAULT_FUNNEL
            if isinstance(funnel, str) and isinstance(metadata, dict):
                item["funnel"] = funnel
                metadata = {key: value for key, value in metadata.items() if key != FUNNEL_KEY}
        item["tags"] = _tags(metadata, dropped)
        timestamp = metric.get("timestamp")
        if timestamp is not None:
            item["timestamp"] = float(timestamp) if isinstance(timestamp, Decimal) else timestamp
        event_id = metric.get("eventId")
        if event_id is None and timestamp is not None:
            try:
                event_id = derived_event_id(project, metric)
            except orjson.JSONEncodeError as exc:
                raise _Refused("the metric nests too deeply") from exc
        item["event_id"] = event_id
        return {key: value for key, value in item.items() if value is not None}


def _body_parts(payload: Any) -> tuple[list[Any], Any]:
    """The objects and the `api_key` of a body; 400/413 when it is no `{"metrics": [...]}`."""
    if not isinstance(payload, dict) or not isinstance(payload.get("metrics"), list):
        raise BadRequest('body must be {"metrics": [...]}')
    metrics = payload["metrics"]
    if not metrics:
        raise BadRequest("metrics must be a non-empty array")
    if len(metrics) > MAX_BATCH_EVENTS:
        raise PayloadTooLarge(f"batch of {len(metrics)} metrics; at most {MAX_BATCH_EVENTS} per request")
    api_key = payload.get("api_key")
    if api_key is not None and not isinstance(api_key, str):
        raise BadRequest("api_key must be a string")
    return metrics, api_key


def _request_body() -> dict[str, Any]:
    schema = GuideMetricsDoc.model_json_schema()
    schema.pop("$defs", None)
    docs = (GuideRevenueDoc, GuideConversionDoc, GuideFeatureUsageDoc, GuidePerformanceDoc)
    schema["properties"]["metrics"]["items"] = {"oneOf": [doc.model_json_schema() for doc in docs]}
    content = {media: {"schema": schema} for media in ("application/json", "text/plain")}
    return {"requestBody": {"required": True, "content": content}}


def guide_router(state: IngestState) -> APIRouter:
    """The routes of the guide's format (GUIDE_PATHS), over the ingest's state."""
    metrics_of = GuideMetrics()

    async def post_metrics(request: Request) -> JSONResponse:
        """The monitoring guide's metrics; 202 only once every accepted event is durably in Kafka."""
        read = await read_write_request(request, state)
        received_at, request_id, write_key = read.received_at, read.request_id, read.write_key
        metrics, api_key = _body_parts(decode_exact(read.body))
        if read.beacon and api_key is None:
            raise UnsupportedMediaType("a text/plain body must carry api_key (navigator.sendBeacon)")
        if write_key is None:
            write_key = state.authenticate(api_key)
        project = write_key.project
        headers = state.allow_origin(request.headers.get("origin"), project)
        state.take(write_key, len(metrics))
        batch = metrics_of.receive(metrics, project, received_at, request_id, state.policy)
        await state.accept(project, request_id, received_at, batch.events, batch.rejected)
        for reason, count in batch.dropped.items():
            GUIDE_DROPPED.labels(reason).inc(count)
        accepted = len(batch.events.accepted)
        response = IngestResponse(accepted=accepted, rejected=[r for r, _ in batch.rejected])
        request.state.log_context = {
            "project": project,
            "accepted": accepted,
            "rejected": len(response.rejected),
            "dropped": sum(batch.dropped.values()),
        }
        return JSONResponse(response.model_dump(), status_code=202 if accepted else 400, headers=headers)

    router = APIRouter(tags=["Monitoring guide's metrics"])
    for path in GUIDE_PATHS:
        router.add_api_route(
            path,
            post_metrics,
            methods=["POST"],
            status_code=202,
            response_model=IngestResponse,
            responses=write_responses("metrics"),
            openapi_extra=_request_body(),
            summary="The monitoring guide's metrics",
        )
    return router
