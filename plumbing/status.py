"""Where every service shows its Prometheus metrics. The ingest API and the query service add
`GET /metrics` to their FastAPI apps (`plumbing.metrics_route`); the processes without an HTTP
API of their own (the streams worker, the notifier, and the sink when ClickHouse is a server)
serve `GET /metrics` and `GET /health` (a `schemas.health.ServiceHealth`) from a daemon thread.

Metrics are an aid to operating the pipeline, never a reason to stop it: a port that cannot be
bound is logged and the service runs on without the endpoint.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, disable_created_metrics, generate_latest

from schemas.health import ServiceHealth, http_status

log = logging.getLogger("cosnap.status")


def exposition() -> bytes:
    """This process's metrics in the text format. Without the `_created` series that
    prometheus_client adds beside every counter and histogram: they double what Prometheus
    stores, for a start time that rate() and increase() do not need."""
    disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus_client 0.26
    return generate_latest(REGISTRY)


def serve_status(host: str, port: int, health: Callable[[], ServiceHealth]) -> None:
    """Serve /metrics and /health on `host:port` from a daemon thread until the process exits;
    nothing when `port` is 0 (off) or cannot be bound. `health` is called on the server's
    threads: it must only read state that the service publishes whole (never iterate what
    another thread mutates)."""
    if port == 0:
        return

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._answer(200, CONTENT_TYPE_LATEST, exposition())
            elif self.path == "/health":
                report = health()
                self._answer(
                    http_status(report.status), "application/json", report.model_dump_json().encode()
                )
            else:
                self._answer(404, "text/plain", b"not found: /metrics and /health are served here\n")

        def _answer(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Scrapes every few seconds would drown the service's log."""

    try:
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError as exc:
        log.error("metrics and health not served: cannot listen on %s:%d: %s", host, port, exc)
        return
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="status", daemon=True).start()
    log.info("metrics on http://%s:%d/metrics, health on /health", host, port)
