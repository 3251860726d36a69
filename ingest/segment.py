"""Segment's HTTP Tracking API on the ingest (docs/reference.md, "Segment Tracking API"), so that
apps instrumented with Segment's libraries send their events here by changing the host.

`POST /v1/track`, `/v1/page`, `/v1/screen`, `/v1/identify`, `/v1/group`, `/v1/alias` take one
message (at most 32 KB), `/v1/batch` and `/v1/import` a batch of them (at most 500 KB, each
message at most 32 KB), as JSON, gzip allowed. The write key is the user of HTTP Basic (as the
libraries send it), a Bearer token, or `writeKey` in the body. The answer is Segment's: `200
{"success": true}` once every event is durably in Kafka (acks=all), with what became of each
message; a message that cannot be read is dead-lettered with its reason, as an event of
`POST /v1/events` is, and costs nothing to its neighbours. A request refused as a whole gets
`{"success": false, "code", "message"}`: 400 for a body that is not JSON or over a limit (as
Segment answers it), 401, 403, 415, 429 and 503 as `/v1/events` has them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ingest.batch import parse_sent_at
from ingest.body import decode_exact
from ingest.errors import BadRequest, IngestError, PayloadTooLarge, ServiceUnavailable, Unauthorized
from ingest.intake import IngestState, read_write_request
from ingest.segment_messages import MAX_MESSAGE_BYTES, Received, SegmentMessages
from plumbing.kafka import KafkaUnavailable
from schemas.records import request_ids_header
from schemas.segment import (
    MessageType,
    SegmentBatchDoc,
    SegmentError,
    SegmentMessageDoc,
    SegmentRejection,
    SegmentResponse,
    TraitsRecord,
    load_segment_mapping,
)

MAX_BATCH_BYTES = 500 * 1024  # Segment's limit of a batch request, after decompression
_SINGLE: tuple[MessageType, ...] = ("track", "page", "screen", "identify", "group", "alias")
_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 415: "unsupported_media_type"}
_CODES |= {429: "rate_limited", 503: "unavailable"}


def _error(description: str) -> dict[str, Any]:
    return {"model": SegmentError, "description": description}


_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error("The body is not JSON, not a message or batch, or over Segment's size limits"),
    401: _error("Missing or unknown write key"),
    403: _error("The page's origin is not allowed for this project"),
    415: _error("Unsupported Content-Type or Content-Encoding"),
    429: _error("The write key's rate limit is reached; retry after Retry-After seconds"),
    503: _error("Kafka cannot take the events now; retry after Retry-After seconds"),
}


def _request_body(schema: dict[str, Any]) -> dict[str, Any]:
    content = {media: {"schema": schema} for media in ("application/json", "text/plain")}
    return {"requestBody": {"required": True, "content": content}}


def _batch_schema() -> dict[str, Any]:
    schema = SegmentBatchDoc.model_json_schema()
    schema.pop("$defs", None)
    schema["properties"]["batch"]["items"] = SegmentMessageDoc.model_json_schema()
    return schema


def _segment_error(state: IngestState, request: Request, refused: IngestError) -> JSONResponse:
    """A refusal in Segment's shape; a size over a limit is a 400, as Segment answers it."""
    status = 400 if isinstance(refused, PayloadTooLarge) else refused.status
    request.state.log_context = {"reason": refused.reason}
    body = SegmentError(code=_CODES.get(status, "bad_request"), message=refused.reason)
    headers = state.refusal_headers(request.headers.get("origin"), refused)
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _body_parts(payload: Any, kind: MessageType | None) -> tuple[list[Any], dict[str, Any], Any, Any]:
    """The messages, the batch's context, its `sentAt` and its `writeKey` of a body."""
    if not isinstance(payload, dict):
        raise BadRequest('body must be a message object, or {"batch": [...]}')
    if kind is None:
        messages = payload.get("batch")
        if not isinstance(messages, list):
            raise BadRequest("batch must be an array of messages")
        context = payload.get("context")
        return messages, context if isinstance(context, dict) else {}, payload.get("sentAt"), payload
    return [payload], {}, None, payload


class SegmentRoutes:
    """The handlers of the Tracking API over the ingest's state and one mapping."""

    def __init__(self, state: IngestState, messages: SegmentMessages) -> None:
        self._state = state
        self._messages = messages

    def handler(self, kind: MessageType | None) -> Callable[[Request], Awaitable[JSONResponse]]:
        async def receive(request: Request) -> JSONResponse:
            try:
                return await self._receive(request, kind)
            except IngestError as refused:
                return _segment_error(self._state, request, refused)
            except KafkaUnavailable as down:
                unavailable = ServiceUnavailable(str(down), headers={"Retry-After": "5"})
                return _segment_error(self._state, request, unavailable)

        receive.__doc__ = (
            f"Segment's {kind} call: one message." if kind else "Segment's batch: many messages of any type."
        )
        return receive

    async def _receive(self, request: Request, kind: MessageType | None) -> JSONResponse:
        state = self._state
        read = await read_write_request(request, state, MAX_MESSAGE_BYTES if kind else MAX_BATCH_BYTES)
        received_at, request_id, write_key = read.received_at, read.request_id, read.write_key
        messages, context, sent_at, keyed = _body_parts(decode_exact(read.body), kind)
        if write_key is None:
            body_key = keyed.get("writeKey")
            if body_key is not None and not isinstance(body_key, str):
                raise Unauthorized("writeKey must be a string")
            write_key = state.authenticate(body_key)
        project = write_key.project
        headers = state.allow_origin(request.headers.get("origin"), project)
        batch_sent_at = parse_sent_at(sent_at, "sentAt")
        state.take(write_key, len(messages))
        received = self._messages.receive(
            messages, kind, context, batch_sent_at, received_at, request_id, state.policy
        )
        outcomes = await asyncio.gather(
            state.accept(project, request_id, received_at, received.events, received.rejected),
            self._store_traits(project, request_id, received),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        accepted = len(received.events.accepted) + len(received.traits)
        rejected = [SegmentRejection(index=r.index, reason=r.reason) for r, _ in received.rejected]
        request.state.log_context = {"project": project, "accepted": accepted, "rejected": len(rejected)}
        response = SegmentResponse(accepted=accepted, rejected=rejected)
        return JSONResponse(response.model_dump(), headers=headers)

    async def _store_traits(self, project: str, request_id: str, received: Received) -> None:
        """Write the request's identify, group and alias calls as one record, and wait for Kafka."""
        if not received.traits:
            return
        record = TraitsRecord(project=project, messages=received.traits)
        await self._state.running.producer.send(
            self._state.topics.traits,
            key=project.encode(),
            value=record.model_dump_json(exclude_none=True).encode(),
            headers=[request_ids_header([request_id])],
        )


def segment_router(state: IngestState, mapping_file: Path) -> APIRouter:
    """The Tracking API's routes, reading messages under the mapping file `mapping_file`."""
    routes = SegmentRoutes(state, SegmentMessages(load_segment_mapping(mapping_file)))
    router = APIRouter(tags=["Segment Tracking API"])
    single = _request_body(SegmentMessageDoc.model_json_schema())
    batch = _request_body(_batch_schema())
    calls: list[tuple[str, MessageType | None, dict[str, Any]]] = [(kind, kind, single) for kind in _SINGLE]
    calls += [("batch", None, batch), ("import", None, batch)]
    for name, kind, body in calls:
        router.add_api_route(
            f"/v1/{name}",
            routes.handler(kind),
            methods=["POST"],
            response_model=SegmentResponse,
            responses=_RESPONSES,
            openapi_extra=body,
            summary=f"Segment {name}",
        )
    return router
