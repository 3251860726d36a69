"""What the alert delivery tests share: webhook receivers on loopback ports."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


@dataclass(frozen=True)
class Delivery:
    at: float  # time.monotonic() on arrival
    headers: dict[str, str]
    body: bytes


class Receiver:
    """A webhook endpoint on 127.0.0.1 that answers from a script of status codes (then 200)
    and keeps every request as received."""

    def __init__(self, *statuses: int, retry_after: str | None = None, forever: int | None = None) -> None:
        self.script = deque(statuses)
        self.deliveries: list[Delivery] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                receiver.deliveries.append(
                    Delivery(time.monotonic(), {k.lower(): v for k, v in self.headers.items()}, body)
                )
                status = receiver.script.popleft() if receiver.script else forever or 200
                self.send_response(status)
                if retry_after is not None and status != 200:
                    self.send_header("Retry-After", retry_after)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hooks/alerts"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    """Receivers a test creates and appends; all are closed after it."""
    created: list[Receiver] = []
    yield created
    for receiver in created:
        receiver.close()
