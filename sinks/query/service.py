"""The query service: analysts' read-only SQL and the dashboards, served over HTTP.

On the embedded store (chDB: one process per data directory) it runs inside the sink's process,
on a thread of its own; its reads get sessions of their own (read-only, limited), so they never
queue behind the sink's inserts.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlparse

import uvicorn
from fastapi import FastAPI

from plumbing.keys import KeyStore
from plumbing.metrics_route import add_metrics_route
from plumbing.private_files import create_private, private_dir, replace_private
from schemas.health import ServiceHealth
from schemas.settings import SinkSettings
from sinks.query.alerting import AlertingStats, start_alerting_stats
from sinks.query.app import create_query_app
from sinks.query.clickhouse_http import create_clickhouse_http_app
from sinks.query.dashboard import create_dashboard_router
from sinks.query.host_check import LOOPBACK_HOSTS, HostCheck
from sinks.query.reader import Reader, read_limits

log = logging.getLogger("cosnap.query")
MIN_TOKEN_CHARS = 32  # secrets.token_urlsafe(32) gives 43


def query_token(settings: SinkSettings) -> str:
    """The token of the query service: created on first start and then kept, in a file only
    this user can read, written whole before it takes its name. A file without a token of at
    least `MIN_TOKEN_CHARS` (empty: cut short before a release that wrote it in one step) is
    replaced by a new token, so the token is never empty and an empty Bearer never matches."""
    path = settings.query_token_file
    private_dir(path.parent)
    new = secrets.token_urlsafe(32)
    if create_private(path, new + "\n"):
        return new
    token = path.read_text().strip()
    if len(token) >= MIN_TOKEN_CHARS:
        return token
    log.warning("query token file %s holds no usable token; writing a new one", path)
    replace_private(path, new + "\n")
    return new


def _serve(app: FastAPI, url: str, name: str) -> uvicorn.Server:
    where = urlparse(url)
    config = uvicorn.Config(
        app,
        host=where.hostname or "127.0.0.1",
        port=where.port or 80,
        log_level="warning",
        log_config=None,  # uvicorn's records go to the root logger's handler, as JSON
    )
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, name=name, daemon=True).start()
    return server


@dataclass(frozen=True)
class QueryService:
    """The query service's servers and the read sessions they share."""

    servers: list[uvicorn.Server]
    reader: Reader
    alerting: AlertingStats

    def stop(self) -> None:
        """Stop serving and close the read sessions. chDB's handles must be closed before the
        interpreter exits: left to its finalisation, chDB 4.4 crashed the process (SIGSEGV)
        in about half the stops (docs/findings.md)."""
        for server in self.servers:
            server.should_exit = True
        self.alerting.stop()
        self.reader.close()


def start_query_service(settings: SinkSettings, health: Callable[[], ServiceHealth]) -> QueryService:
    """Serve `/v1/query`, `/dashboard`, `/health` (the sink's report, from `health`) and
    `/metrics` (with the alerting measures of sinks/query/alerting.py) on `settings.query_url`,
    and ClickHouse's HTTP interface on `settings.clickhouse_http_url` (unless empty), from daemon
    threads, until `stop()`."""
    reader = Reader(settings.resolved_clickhouse_url, read_limits(settings))
    token = query_token(settings)
    app = create_query_app(reader, token, health)
    host = urlparse(settings.query_url).hostname
    app.include_router(create_dashboard_router(reader, host))
    app.add_middleware(HostCheck, allowed_hosts={*LOOPBACK_HOSTS, host or ""}, paths=["/v1/query"])
    add_metrics_route(app)
    servers = [_serve(app, settings.query_url, "query-service")]
    if settings.clickhouse_http_url:
        clickhouse = create_clickhouse_http_app(reader, KeyStore(settings.keys_file), token)
        servers.append(_serve(clickhouse, settings.clickhouse_http_url, "clickhouse-http"))
    alerting = start_alerting_stats(reader, settings.alerting_days, settings.alerting_refresh_s)
    return QueryService(servers, reader, alerting)


def start_alerting_measures(settings: SinkSettings) -> AlertingStats:
    """With a ClickHouse server, where no query service runs in the sink's process: the alerting
    gauges of the sink's status port, read through read sessions of their own."""
    reader = Reader(settings.resolved_clickhouse_url, read_limits(settings))
    return start_alerting_stats(reader, settings.alerting_days, settings.alerting_refresh_s)
