"""`GET /metrics` on the services that have a FastAPI app of their own (the ingest API, the
query service). Apart from `plumbing.status` so that the processes without one (the streams
worker, the notifier) never load FastAPI."""

from __future__ import annotations

from fastapi import FastAPI, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST

from plumbing.status import exposition


def add_metrics_route(app: FastAPI) -> None:
    """`GET /metrics` on `app`: this process's metrics in Prometheus's text exposition format."""

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> Response:
        """Prometheus metrics of this process (text exposition format)."""
        return Response(exposition(), media_type=CONTENT_TYPE_LATEST)
