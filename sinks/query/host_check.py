"""Requests to the query service must be addressed to this machine by name.

The service listens on loopback, but a web page the analyst opens elsewhere can still reach it:
its site resolves a name of its own to 127.0.0.1 (DNS rebinding) and the browser then sends
that name in `Host`. Answering only requests whose `Host` is a loopback name (`127.0.0.1`,
`localhost`, `::1`) or the host the service was told to listen on shuts that out: such a page
can neither run `/v1/query` nor read what it returns. The dashboard routes check the same set
on their own (sinks/query/dashboard.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_REFUSED = json.dumps({"detail": "the query service answers loopback host names only"}).encode()


def host_name(host_header: str) -> str | None:
    """The name in a `Host` header, lower-cased, without port or IPv6 brackets; None if none."""
    try:
        return urlsplit("//" + host_header).hostname
    except ValueError:  # a malformed port or bracket
        return None


class HostCheck:
    """ASGI middleware: 403 for a request to one of `paths` whose `Host` names another machine."""

    def __init__(self, app: ASGIApp, allowed_hosts: Iterable[str], paths: Iterable[str]) -> None:
        self.app = app
        self.allowed = frozenset(name.lower() for name in allowed_hosts)
        self.paths = frozenset(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in self.paths:
            headers = dict(scope["headers"])
            name = host_name(headers.get(b"host", b"").decode("latin-1"))
            if name not in self.allowed:
                await send(
                    {
                        "type": "http.response.start",
                        "status": 403,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", b"%d" % len(_REFUSED)),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": _REFUSED})
                return
        await self.app(scope, receive, send)
