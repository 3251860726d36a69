"""Fixtures of the SDK tests: a scripted stand-in for the ingest API (client logic only), and a
pipeline on a Kafka broker of its own that a test may stop and start again."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


@dataclass(frozen=True)
class Reply:
    """One scripted answer; `hang` holds it until the event is set (or 30 s pass)."""

    status: int = 202
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] | None = None
    hang: threading.Event | None = None


@dataclass(frozen=True)
class Received:
    at: float  # time.monotonic() when the request arrived
    path: str
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def event_ids(self) -> list[str]:
        return [event["event_id"] for event in self.body["events"]]


class ScriptedApi:
    """An HTTP server on 127.0.0.1 answering `POST /v1/events` from a script of replies, then
    with 202 and every event accepted; it records every request."""

    def __init__(self) -> None:
        self.script: deque[Reply] = deque()
        self.requests: list[Received] = []
        self.fallback: Reply | None = None  # replaces the default 202 once the script is used up
        self._lock = threading.Lock()
        self._hangs: list[threading.Event] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = json.loads(self.rfile.read(length))
                with api._lock:
                    api.requests.append(Received(time.monotonic(), self.path, dict(self.headers), body))
                    reply = api.script.popleft() if api.script else api.fallback or Reply()
                if reply.hang is not None:
                    with api._lock:
                        api._hangs.append(reply.hang)
                    reply.hang.wait(30)
                payload = reply.body
                if payload is None:
                    payload = {"accepted": len(body.get("events", [])), "rejected": []}
                data = json.dumps(payload).encode()
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def received(self) -> list[Received]:
        with self._lock:
            return list(self.requests)

    def event_ids(self) -> list[str]:
        return [event_id for request in self.received() for event_id in request.event_ids]

    def wait_requests(self, count: int, timeout: float = 5.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.received()) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.received()

    def close(self) -> None:
        with self._lock:
            hangs = [*self._hangs, *(r.hang for r in self.script if r.hang is not None)]
        for hang in hangs:
            hang.set()
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def api() -> Iterator[ScriptedApi]:
    server = ScriptedApi()
    yield server
    server.close()


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, level: int = logging.WARNING) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= level]


@pytest.fixture
def sdk_log() -> Iterator[Captured]:
    """Records of the `cosnap_metrics_sdk` logger (pytest's logging plugin may be off)."""
    logger = logging.getLogger("cosnap_metrics_sdk")
    handler = Captured()
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(previous)
