"""The ingest API (DESIGN §3.1): `POST /v1/events` and health endpoints."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import TypeAdapter

from ingest.batch import TimePolicy, dead_letter_raw, parse_events, split_body
from ingest.body import check_content_type, decode_json, decompress, read_capped
from ingest.errors import IngestError, Unauthorized, UnsupportedMediaType
from ingest.keys import KeyStore
from ingest.producer import EnvelopeProducer
from schemas.events import Event, EventBatch, IngestResponse
from schemas.records import DeadLetter
from schemas.settings import IngestSettings

log = logging.getLogger("cosnap.ingest")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def _header_key(authorization: str | None) -> str | None:
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


def _openapi_body_schema() -> tuple[dict[str, Any], dict[str, Any]]:
    template = "#/components/schemas/{model}"
    single = TypeAdapter[Event](Event).json_schema(ref_template=template)
    batch = EventBatch.model_json_schema(ref_template=template)
    components = {**single.pop("$defs", {}), **batch.pop("$defs", {}), "EventBatch": batch}
    return {"oneOf": [single, {"$ref": "#/components/schemas/EventBatch"}]}, components


def create_app(settings: IngestSettings, producer: EnvelopeProducer | None = None) -> FastAPI:
    keys = KeyStore(settings.keys_file)
    topics = settings.topics
    policy = TimePolicy(
        max_future_skew=timedelta(seconds=settings.max_future_skew_s),
        max_event_age=timedelta(seconds=settings.max_event_age_s),
    )
    state: dict[str, EnvelopeProducer] = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        state["producer"] = producer or EnvelopeProducer(
            settings.kafka_bootstrap, timeout_s=settings.produce_timeout_s
        )
        yield
        await asyncio.to_thread(state["producer"].close)

    app = FastAPI(
        title="Cosnap Metrics ingest API",
        version="1",
        summary="Business events (revenue, conversion, feature, performance) into Kafka, durably.",
        lifespan=lifespan,
    )

    @app.exception_handler(IngestError)
    async def _refused(_request: Request, exc: IngestError) -> JSONResponse:
        return JSONResponse({"detail": exc.reason}, status_code=exc.status, headers=exc.headers)

    async def _dead_letter(
        project: str | None, request_id: str, received_at: datetime, rows: list[DeadLetter]
    ) -> None:
        sends = [
            state["producer"].send(
                topics.dead_letter,
                key=(project or "").encode(),
                value=row.model_dump_json().encode(),
                headers={"request_id": request_id.encode()},
            )
            for row in rows
        ]
        for result in await asyncio.gather(*sends, return_exceptions=True):
            if isinstance(result, Exception):
                log.warning("dead-letter write failed for request %s: %s", request_id, result)

    body_schema, body_components = _openapi_body_schema()

    @app.post(
        "/v1/events",
        status_code=202,
        response_model=IngestResponse,
        responses={
            400: {"model": IngestResponse, "description": "No event was accepted (or the body is not JSON)"},
            401: {"description": "Missing or unknown write key"},
            413: {"description": "Body over 1 MiB (after decompression) or over 1,000 events"},
            415: {"description": "Unsupported Content-Type or Content-Encoding"},
            503: {"description": "Kafka cannot take the events now; retry after Retry-After seconds"},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": body_schema},
                    "text/plain": {"schema": body_schema},
                },
            }
        },
    )
    async def post_events(request: Request) -> JSONResponse:
        """Accept one event or a batch; 202 only once every accepted event is durably in Kafka."""
        received_at = datetime.now(UTC)
        header_id = request.headers.get("x-request-id", "")
        request_id = header_id if _REQUEST_ID.match(header_id) else uuid.uuid4().hex
        beacon = check_content_type(request.headers.get("content-type"))
        key = _header_key(request.headers.get("authorization"))
        project = keys.project_for(key) if key is not None else None
        if key is not None and project is None:
            raise Unauthorized("unknown write key")
        raw = await read_capped(request.stream(), request.headers.get("content-length"))
        payload = decode_json(decompress(raw, request.headers.get("content-encoding")))
        items, sent_at, body_key = split_body(payload)
        if beacon and body_key is None:
            raise UnsupportedMediaType("a text/plain body must carry api_key (navigator.sendBeacon)")
        if project is None:
            if body_key is None:
                raise Unauthorized("missing write key")
            project = keys.project_for(body_key)
            if project is None:
                raise Unauthorized("unknown write key")

        parsed = parse_events(items, sent_at, received_at, policy)
        if parsed.accepted:
            envelope = {
                "v": 1,
                "project": project,
                "request_id": request_id,
                "received_at": received_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "events": parsed.accepted,
            }
            await state["producer"].send(
                topics.events,
                key=project.encode(),
                value=orjson.dumps(envelope),
                headers={"request_id": request_id.encode()},
            )
        if parsed.rejected:
            await _dead_letter(
                project,
                request_id,
                received_at,
                [
                    DeadLetter(
                        project=project,
                        request_id=request_id,
                        received_at=received_at,
                        index=rejection.index,
                        reason=rejection.reason,
                        raw=dead_letter_raw(item),
                    )
                    for rejection, item in parsed.rejected
                ],
            )
        response = IngestResponse(accepted=len(parsed.accepted), rejected=[r for r, _ in parsed.rejected])
        return JSONResponse(
            response.model_dump(),
            status_code=202 if parsed.accepted else 400,
            headers={"X-Request-ID": request_id},
        )

    @app.get("/health")
    async def health() -> dict[str, str]:
        """Liveness: the process serves requests."""
        return {"status": "ok"}

    @app.get("/health/ready")
    async def ready() -> JSONResponse:
        """Readiness: 200 once Kafka answers, 503 before."""
        ok = await asyncio.to_thread(state["producer"].ready, 2.0)
        return JSONResponse({"status": "ready" if ok else "unavailable"}, status_code=200 if ok else 503)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            schema.setdefault("components", {}).setdefault("schemas", {}).update(body_components)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
