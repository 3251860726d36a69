"""Request ids: the correlation id that follows a request from HTTP to ClickHouse.

The id is the client's `X-Request-ID` when it is a safe token, or one made here. It is echoed in
`X-Request-ID` on every response (refusals and failures too), kept in `request.state.request_id`
for the route, tagged on any Sentry event of the request, and logged with the request's line.
The route stores it on each accepted event (`request_id`) and in the envelope's header
(schemas.records.REQUEST_IDS_HEADER), where the streams worker and the sink find it.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

import sentry_sdk
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Safe in a Kafka header list (no commas), a log line and a Sentry tag.
REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_HEADER = b"x-request-id"
_JSON = [(b"content-type", b"application/json")]

access_log = logging.getLogger("cosnap.ingest.access")


def request_id_of(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's X-Request-ID if it is a safe token, else a new one."""
    for name, value in headers:
        if name == _HEADER:
            text = value.decode("latin-1")
            if REQUEST_ID.match(text):
                return text
    return uuid.uuid4().hex


class RequestIds:
    """ASGI middleware: a request id for every HTTP request, and one log line per request with
    its method, path, status, duration and the context the route added to
    `request.state.log_context` (project, accepted, rejected, reason). Pure ASGI, so it costs
    microseconds per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope["headers"])
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        sentry_sdk.set_tag("request_id", request_id)  # Sentry's ASGI integration isolates each request
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (_HEADER, request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # A bug, never bad input. Answered here rather than by Starlette's last-resort
            # handler, so that the 500 carries the id that finds its log lines and Sentry event.
            if not status:
                await send_with_id({"type": "http.response.start", "status": 500, "headers": _JSON})
                await send_with_id({"type": "http.response.body", "body": b'{"detail":"internal error"}'})
            raise
        finally:
            # A failure's traceback is logged (and sent to Sentry) once, by the server.
            access_log.log(
                logging.INFO if status < 500 else logging.WARNING,
                "%s %s %d",
                scope["method"],
                scope["path"],
                status,
                extra={
                    "request_id": request_id,
                    "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 1),
                    **state.get("log_context", {}),
                },
            )
