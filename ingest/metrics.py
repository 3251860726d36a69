"""Prometheus metrics of the ingest API, served by the app at `GET /metrics`.

Labels stay bounded whatever clients send: a route is one of the app's route templates
(`unmatched` for any other path), a method one of the HTTP methods the app knows, a status an
HTTP code, and a rejected event counts under a reason class rather than its reason's text.
The ingest runs as one process (uvicorn without `--workers`), so the default registry is whole.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Literal

from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ingest.body import Unparseable

RejectReason = Literal["unparseable", "invalid", "timestamp", "duplicate"]
# Why a part of an accepted object of the monitoring guide's format was not kept (ingest/guide_metrics.py).
GuideDropReason = Literal[
    "too_many_tags", "bad_key", "long_value", "nested_value", "null_value", "bad_metadata", "unknown_field"
]

_METHODS = frozenset({"GET", "HEAD", "POST", "OPTIONS"})

REQUESTS = Counter(
    "cosnap_ingest_requests_total",
    "HTTP requests answered, by route template, method and status",
    ["route", "method", "status"],
)
REQUEST_SECONDS = Histogram(
    "cosnap_ingest_request_duration_seconds",
    "Time from a request's arrival to the end of its response, by route template",
    ["route"],
)
EVENTS_ACCEPTED = Counter(
    "cosnap_ingest_events_accepted_total", "Events acknowledged by Kafka (acks=all) and counted in a 202"
)
EVENTS_REJECTED = Counter(
    "cosnap_ingest_events_rejected_total",
    "Events refused one by one and sent to the dead-letter topic, by reason class",
    ["reason"],
)
GUIDE_DROPPED = Counter(
    "cosnap_ingest_guide_dropped_total",
    "Metadata entries and unknown fields of accepted monitoring-guide metrics that were not kept, by reason",
    ["reason"],
)
ENVELOPE_EVENTS = Histogram(
    "cosnap_ingest_envelope_events",
    "Events per envelope record written to the events topic",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
ENVELOPE_BYTES = Histogram(
    "cosnap_ingest_envelope_bytes",
    "Size of the envelope records written to the events topic",
    buckets=(512, 2048, 8192, 32768, 131072, 524288, 1048576, 4194304),
)
PRODUCE_SECONDS = Histogram(
    "cosnap_ingest_produce_duration_seconds",
    "Time from an envelope's hand-over to the producer to Kafka's answer, by outcome (acked, failed)",
    ["outcome"],
)


def reject_reason(item: Any, reason: str) -> RejectReason:
    """The class of a rejection (schemas.events.Rejection.reason) of `item` as sent."""
    if isinstance(item, Unparseable):
        return "unparseable"
    if reason.startswith("timestamp"):  # a malformed timestamp, or one outside the time policy
        return "timestamp"
    if reason.startswith("duplicate"):
        return "duplicate"
    return "invalid"


def observe_produce(started: float) -> Callable[[asyncio.Future[None]], None]:
    """A done-callback for an envelope's ack future that records how long Kafka took to answer."""

    def done(acked: asyncio.Future[None]) -> None:
        if acked.cancelled():
            return
        outcome = "failed" if acked.exception() is not None else "acked"
        PRODUCE_SECONDS.labels(outcome).observe(time.perf_counter() - started)

    return done


class RequestMetrics:
    """ASGI middleware counting every response by route template and status, and timing it.
    Pure ASGI (not BaseHTTPMiddleware), so it costs microseconds per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets when the app raises before answering

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            # The router records the matched route in the scope it was handed (this one).
            route = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"] if scope["method"] in _METHODS else "other"
            REQUESTS.labels(route, method, str(status)).inc()
            REQUEST_SECONDS.labels(route).observe(time.perf_counter() - started)
