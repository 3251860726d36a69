"""The ingest API (docs/reference.md, "Events"): `POST /v1/events` and health endpoints."""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import TypeAdapter

from ingest.batch import TimePolicy, parse_events, split_body
from ingest.body import decode_body
from ingest.envelopes import EnvelopePacker
from ingest.errors import IngestError, ServiceUnavailable, UnsupportedMediaType
from ingest.guide_metrics import GUIDE_PATHS, guide_router
from ingest.health import DetailedHealthCheck
from ingest.intake import IngestState, Kafka, cors, read_write_request, write_responses
from ingest.limits import RateLimiter
from ingest.metrics import RequestMetrics
from ingest.request_ids import RequestIds
from ingest.segment import segment_router
from ingest.sentry_hooks import sentry_router
from plumbing.kafka import AckedProducer, KafkaUnavailable, RecordProducer
from plumbing.keys import KeyStore
from plumbing.metrics_route import add_metrics_route
from plumbing.status import elapsed_ms, process_health
from schemas.events import ErrorResponse, Event, EventBatch, IngestResponse, Rejection
from schemas.health import Check, DetailedHealth, Liveness, Readiness, http_status
from schemas.settings import IngestSettings

_PREFLIGHT = {
    "Access-Control-Allow-Methods": "POST, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, Content-Encoding, X-Request-ID",
    "Access-Control-Max-Age": "600",
}


_EVENT_MODELS = ("RevenueEvent", "ConversionEvent", "FeatureEvent", "PerformanceEvent")


def _openapi_body_schemas() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The request body as OpenAPI states it, for JSON and for text/plain, and the components
    they refer to. A body is one event or a batch, and may carry the write key as `api_key`
    (an event's own model has no such field: `RevenueEventBody` adds it); a text/plain body
    (navigator.sendBeacon) must carry it (`RevenueEventBeacon`, ..., `EventBatchBeacon`)."""
    template = "#/components/schemas/{model}"
    single = TypeAdapter[Event](Event).json_schema(ref_template=template)
    batch = EventBatch.model_json_schema(ref_template=template)
    components = {**single.pop("$defs", {}), **batch.pop("$defs", {}), "EventBatch": batch}
    optional_key = batch["properties"]["api_key"]

    def with_key(model: str, suffix: str, required: bool) -> dict[str, str]:
        body = copy.deepcopy(components[model])
        body["title"] = f"{model}{suffix}"
        body["properties"]["api_key"] = {"type": "string", "minLength": 1} if required else optional_key
        if required:
            body["required"] = [*body.get("required", []), "api_key"]
        components[body["title"]] = body
        return {"$ref": template.format(model=body["title"])}

    batch_ref = {"$ref": template.format(model="EventBatch")}  # its api_key is optional already
    json_body = {"oneOf": [*(with_key(m, "Body", False) for m in _EVENT_MODELS), batch_ref]}
    beacon = {"oneOf": [with_key(m, "Beacon", True) for m in (*_EVENT_MODELS, "EventBatch")]}
    return json_body, beacon, components


def create_app(settings: IngestSettings, producer: RecordProducer | None = None) -> FastAPI:
    """The ingest app. `producer` replaces the Kafka producer (benchmarks use one that does
    nothing, to measure validation alone; the HTTP tests one that keeps records in memory)."""
    topics = settings.topics
    state = IngestState(
        keys=KeyStore(settings.keys_file),
        limiter=RateLimiter(settings.rate_limit_events_per_s, settings.rate_limit_burst),
        policy=TimePolicy(
            max_future_skew=timedelta(seconds=settings.max_future_skew_s),
            max_event_age=timedelta(seconds=settings.max_event_age_s),
        ),
        detailed_health=DetailedHealthCheck(settings),
        topics=topics,
        events_key=settings.events_key,
    )
    keys = state.keys

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        kafka: RecordProducer = producer or AckedProducer(
            settings.kafka_bootstrap, timeout_s=settings.produce_timeout_s, client_id="cosnap-ingest"
        )
        packer = EnvelopePacker(kafka, topics.events, linger_s=settings.envelope_linger_s)
        state.kafka = Kafka(kafka, packer)
        yield
        packer.flush_open()
        await asyncio.to_thread(kafka.close)

    app = FastAPI(
        title="Cosnap Metrics ingest API",
        version="1",
        summary="Business events (revenue, conversion, feature, performance) into Kafka, durably.",
        lifespan=lifespan,
    )
    app.add_middleware(RequestMetrics)
    app.add_middleware(RequestIds)  # outermost: even a failure's 500 carries the request id

    @app.exception_handler(IngestError)
    async def _refused(request: Request, exc: IngestError) -> JSONResponse:
        request.state.log_context = {"reason": exc.reason}
        headers = state.refusal_headers(request.headers.get("origin"), exc)
        return JSONResponse({"detail": exc.reason}, status_code=exc.status, headers=headers)

    @app.exception_handler(KafkaUnavailable)
    async def _kafka_down(request: Request, exc: KafkaUnavailable) -> JSONResponse:
        return await _refused(request, ServiceUnavailable(str(exc), headers={"Retry-After": "5"}))

    body_schema, beacon_schema, body_components = _openapi_body_schemas()

    @app.post(
        "/v1/events",
        status_code=202,
        response_model=IngestResponse,
        responses=write_responses("events"),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": body_schema},
                    "text/plain": {"schema": beacon_schema},
                },
            }
        },
    )
    async def post_events(request: Request) -> JSONResponse:
        """Accept one event or a batch; 202 only once every accepted event is durably in Kafka."""
        read = await read_write_request(request, state)
        received_at, request_id, write_key = read.received_at, read.request_id, read.write_key
        body = split_body(*decode_body(read.body))
        if read.beacon and body.api_key is None:
            raise UnsupportedMediaType("a text/plain body must carry api_key (navigator.sendBeacon)")
        if write_key is None:
            write_key = state.authenticate(body.api_key)
        project = write_key.project
        headers = state.allow_origin(request.headers.get("origin"), project)
        state.take(write_key, len(body.items))

        parsed = parse_events(body.items, body.sent_at, received_at, request_id, state.policy)
        await state.accept(project, request_id, received_at, parsed, parsed.rejected)
        response = IngestResponse(accepted=len(parsed.accepted), rejected=[r for r, _ in parsed.rejected])
        request.state.log_context = {
            "project": project,
            "accepted": response.accepted,
            "rejected": len(response.rejected),
        }
        return JSONResponse(
            response.model_dump(), status_code=202 if parsed.accepted else 400, headers=headers
        )

    @app.options("/v1/events", status_code=204, include_in_schema=False)
    async def preflight(request: Request) -> Response:
        """CORS preflight: allowed for origins that some project lists."""
        origin = request.headers.get("origin", "")
        if not origin or not keys.origin_allowed(origin):
            return Response(status_code=403)
        return Response(status_code=204, headers=cors(origin) | _PREFLIGHT)

    for path in GUIDE_PATHS:  # browsers post the guide's format too
        app.add_api_route(path, preflight, methods=["OPTIONS"], status_code=204, include_in_schema=False)

    @app.get("/health", response_model=Liveness)
    async def health() -> JSONResponse:
        """Liveness: the process serves requests (always 200), with its uptime, version and memory."""
        answer = Liveness(**process_health({}).model_dump())
        return JSONResponse(answer.model_dump(mode="json"))

    @app.get("/health/ready", response_model=Readiness, responses={503: {"model": Readiness}})
    async def ready() -> JSONResponse:
        """Readiness: 200 once Kafka answers, 503 before."""
        started = time.perf_counter()
        ok = await asyncio.to_thread(state.running.producer.ready, 2.0)
        kafka = Check(status="healthy" if ok else "unhealthy", responseTime=elapsed_ms(started))
        answer = Readiness(
            **process_health({"kafka": kafka}).model_dump(), status="ready" if ok else "unavailable"
        )
        return JSONResponse(answer.model_dump(mode="json"), status_code=200 if ok else 503)

    @app.get(
        "/health/detailed",
        response_model=DetailedHealth,
        responses={503: {"model": DetailedHealth, "description": "Kafka unreachable or topics missing"}},
    )
    async def health_detailed() -> JSONResponse:
        """Kafka, topics, ClickHouse, consumer lag and memory: healthy or degraded (200), unhealthy (503)."""
        report = await state.detailed_health.report()
        return JSONResponse(report.model_dump(mode="json"), status_code=http_status(report.status))

    app.include_router(segment_router(state, settings.segment_mapping_file))
    app.include_router(guide_router(state))
    app.include_router(sentry_router(state, settings))
    add_metrics_route(app)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(body_components)
            components["ErrorResponse"] = ErrorResponse.model_json_schema()
            components["Rejection"] = Rejection.model_json_schema()
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
