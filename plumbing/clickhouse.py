"""Connections to ClickHouse: chDB in this process, or a server over HTTP."""

from __future__ import annotations

import os
from urllib.parse import urlencode, urlparse

import clickhouse_connect
from clickhouse_connect.driver.client import Client

MIB = 1024 * 1024
# The embedded engine's caches, bounded: ClickHouse sizes them for a server of its own (5 GiB each
# for marks, skipping-index marks and primary indexes, up to half the RAM), while chDB lives in
# the sink's process beside its Kafka consumer and the query service. They fill only as reads
# touch parts and are freed as they are evicted (docs/reference.md, "Sink memory"). The
# uncompressed, page and query-result caches are off by default and stay off.
CHDB_CACHE_BYTES = {
    "mark_cache_size": 64 * MIB,
    "index_mark_cache_size": 16 * MIB,
    "primary_index_cache_size": 64 * MIB,
    "query_condition_cache_size": 16 * MIB,
    "compiled_expression_cache_size": 32 * MIB,
}


def chdb_connection(url: str) -> str:
    """What `chdb.connect` takes for `chdb:///path`: the resolved path and the caches' bounds, so
    that whichever handle opens the engine first in a process opens it bounded."""
    return f"{os.path.realpath(urlparse(url).path)}?{urlencode(CHDB_CACHE_BYTES)}"


def connect(url: str) -> Client:
    """A client for `chdb:///path` (embedded; one process per directory, its caches bounded by
    CHDB_CACHE_BYTES) or `http(s)://...`."""
    if url.startswith("chdb:"):
        return clickhouse_connect.get_client(dsn=url, chdb_options=CHDB_CACHE_BYTES)
    parsed = urlparse(url)
    return clickhouse_connect.get_client(
        host=parsed.hostname or "127.0.0.1",
        port=parsed.port or 8123,
        username=parsed.username or "default",
        password=parsed.password or "",
        secure=parsed.scheme == "https",
    )
