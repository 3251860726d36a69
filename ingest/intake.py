"""What every write route of the ingest shares (`POST /v1/events`, Segment's Tracking API, the
monitoring guide's metrics): the reading of a write request, the app's state, write keys, browser
origins, rate limits, and the hand-over of a request's accepted events to Kafka and of its
rejected items to the dead-letter topic."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import Request

from ingest.batch import ParsedBatch, TimePolicy, dead_letter_raw
from ingest.body import MAX_BODY_BYTES, check_content_type, decompress, read_capped
from ingest.envelopes import EnvelopePacker
from ingest.errors import Forbidden, IngestError, RateLimited, Unauthorized
from ingest.health import DetailedHealthCheck
from ingest.limits import RateLimiter
from ingest.metrics import EVENTS_ACCEPTED, EVENTS_REJECTED, reject_reason
from plumbing.kafka import RecordProducer
from plumbing.keys import KeyStore, WriteKey
from schemas.events import ErrorResponse, Rejection
from schemas.records import DeadLetter, request_ids_header
from schemas.settings import EventsKey
from schemas.topics import Topics

log = logging.getLogger("cosnap.ingest")


@dataclass(frozen=True, slots=True)
class WriteRequest:
    """A write request as every write route reads it first: when it arrived, its id, whether it
    is a sendBeacon body (text/plain), the write key of its `Authorization` header (None when it
    has none: the body may carry one) and its body, decompressed."""

    received_at: datetime
    request_id: str
    beacon: bool
    write_key: WriteKey | None
    body: bytes


async def read_write_request(request: Request, state: IngestState, cap: int = MAX_BODY_BYTES) -> WriteRequest:
    """Read `request` up to `cap` bytes (raw and decompressed): 415 for a media type no write
    route takes, 401 for a header key that is wrong, 413 past the cap."""
    received_at = datetime.now(UTC)
    beacon = check_content_type(request.headers.get("content-type"))
    presented = header_key(request.headers.get("authorization"))
    write_key = state.authenticate(presented) if presented is not None else None
    raw = await read_capped(request.stream(), request.headers.get("content-length"), cap)
    body = decompress(raw, request.headers.get("content-encoding"), cap)
    return WriteRequest(received_at, request.state.request_id, beacon, write_key, body)


def header_key(authorization: str | None) -> str | None:
    """The write key of `Authorization: Bearer <key>` or HTTP Basic with the key as user."""
    if not authorization:
        return None
    scheme, _, credentials = authorization.partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return credentials.strip()
    if scheme == "basic":
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise Unauthorized("malformed Basic credentials") from exc
        return decoded.partition(":")[0]
    raise Unauthorized("use Authorization: Bearer <write key> or Basic with the key as user")


def cors(origin: str) -> dict[str, str]:
    """The CORS headers of a response to a page at `origin` that may read it."""
    # Never `*`, and never Allow-Credentials: write keys travel in headers or the body, not cookies.
    return {
        "Access-Control-Allow-Origin": origin,
        "Vary": "Origin",
        "Access-Control-Expose-Headers": "Retry-After, X-Request-ID",
    }


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


def write_responses(what: str) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI responses of a route that takes a batch of `what` ("events") the way
    `POST /v1/events` does: 202 or 400 with per-item reasons, and the refusals of a request."""
    return {
        400: {
            "description": f"No {what[:-1]} was accepted (per-item reasons), "
            "or the body is not a valid request",
            "content": {
                "application/json": {
                    "schema": {
                        "oneOf": [
                            {"$ref": "#/components/schemas/IngestResponse"},
                            {"$ref": "#/components/schemas/ErrorResponse"},
                        ]
                    }
                }
            },
        },
        401: _error("Missing or unknown write key"),
        403: _error("The page's origin is not allowed for this project"),
        413: _error(f"Body over 1 MiB (after decompression) or over 1,000 {what}"),
        415: _error("Unsupported Content-Type or Content-Encoding"),
        429: _error("The write key's rate limit is reached; retry after Retry-After seconds"),
        503: _error("Kafka cannot take the events now; retry after Retry-After seconds"),
    }


@dataclass(frozen=True, slots=True)
class Kafka:
    """The app's way into Kafka while it runs: the producer and the packer over it."""

    producer: RecordProducer
    packer: EnvelopePacker


@dataclass(slots=True)
class IngestState:
    """What the ingest app keeps: fixed at creation, except `kafka`, set when the app starts."""

    keys: KeyStore
    limiter: RateLimiter
    policy: TimePolicy
    detailed_health: DetailedHealthCheck
    topics: Topics
    events_key: EventsKey = "project"
    kafka: Kafka | None = None

    @property
    def running(self) -> Kafka:
        """The producer and packer; they exist once the app has started (its lifespan)."""
        if self.kafka is None:
            raise RuntimeError("the ingest app is not running (its lifespan has not started)")
        return self.kafka

    def authenticate(self, presented: str | None) -> WriteKey:
        """The write key presented, or 401."""
        if presented is None:
            raise Unauthorized("missing write key")
        found = self.keys.authenticate(presented)
        if found is None:
            raise Unauthorized("unknown write key")
        return found

    def allow_origin(self, origin: str | None, project: str) -> dict[str, str]:
        """The CORS headers for a page at `origin` posting for `project`; 403 when the project
        does not list the origin. None for a client that is not a browser page."""
        if not origin:
            return {}
        if not self.keys.origin_allowed(origin, project):
            raise Forbidden(f"origin {origin} is not allowed for project {project}")
        return cors(origin)

    def refusal_headers(self, origin: str | None, refused: IngestError) -> dict[str, str]:
        """The headers of a refusal: its own, and CORS so that a page can read why."""
        headers = dict(refused.headers)
        if origin and self.keys.origin_allowed(origin):
            headers |= cors(origin)
        return headers

    def take(self, write_key: WriteKey, events: int) -> None:
        """Spend `events` of the key's rate limit, or 429 with the wait in Retry-After."""
        wait = self.limiter.take(write_key.key_id, events)
        if wait:
            raise RateLimited("rate limit of this write key reached", headers={"Retry-After": f"{wait:.0f}"})

    async def accept(
        self,
        project: str,
        request_id: str,
        received_at: datetime,
        parsed: ParsedBatch,
        rejected: list[tuple[Rejection, Any]],
    ) -> None:
        """Hand the accepted events of `parsed` to Kafka and wait for the acknowledgement of every
        envelope holding one (KafkaUnavailable when one does not come), then dead-letter the
        rejected items with their reasons. Envelopes are keyed by project, or by series
        (`events_key`, docs/reference.md, "Spreading a project over partitions")."""
        accepted = parsed.accepted
        if accepted:
            keys: bytes | list[bytes] = project.encode()
            if self.events_key == "series":
                keys = [f"{project}|{name}".encode() for name in parsed.names]
            await self.running.packer.submit(orjson.dumps(project), accepted, keys, request_id)
            EVENTS_ACCEPTED.inc(len(accepted))
        for rejection, item in rejected:
            EVENTS_REJECTED.labels(reject_reason(item, rejection.reason)).inc()
        if rejected:
            await self._dead_letter(project, request_id, received_at, rejected)

    async def _dead_letter(
        self, project: str, request_id: str, received_at: datetime, rejected: list[tuple[Rejection, Any]]
    ) -> None:
        rows = [
            DeadLetter.of_request_item(
                project,
                request_id,
                received_at,
                index=rejection.index,
                reason=rejection.reason,
                raw=dead_letter_raw(item),
            )
            for rejection, item in rejected
        ]
        header = [request_ids_header([request_id])]
        sends = [
            self.running.producer.send(
                self.topics.dead_letter,
                key=project.encode(),
                value=row.model_dump_json().encode(),
                headers=header,
            )
            for row in rows
        ]
        for result in await asyncio.gather(*sends, return_exceptions=True):
            if isinstance(result, Exception):
                log.warning(
                    "dead-letter write failed for request %s: %s",
                    request_id,
                    result,
                    extra={"request_id": request_id, "project": project},
                )
