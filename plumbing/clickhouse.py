"""Connections to ClickHouse: chDB in this process, or a server over HTTP."""

from __future__ import annotations

from urllib.parse import urlparse

import clickhouse_connect
from clickhouse_connect.driver.client import Client


def connect(url: str) -> Client:
    """A client for `chdb:///path` (embedded; one process per directory) or `http(s)://...`."""
    if url.startswith("chdb:"):
        return clickhouse_connect.get_client(dsn=url)
    parsed = urlparse(url)
    return clickhouse_connect.get_client(
        host=parsed.hostname or "127.0.0.1",
        port=parsed.port or 8123,
        username=parsed.username or "default",
        password=parsed.password or "",
        secure=parsed.scheme == "https",
    )
