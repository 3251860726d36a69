"""The sink process: apply the DDL, serve read-only queries (embedded chDB), consume and insert."""

from __future__ import annotations

import logging
import secrets
import signal
import threading
from types import FrameType
from urllib.parse import urlparse

import uvicorn
from clickhouse_connect.driver.client import Client

from cosnap_metrics.private_files import create_private, private_dir, replace_private
from cosnap_metrics.status import add_metrics_route, serve_status
from schemas.health import ServiceHealth
from schemas.settings import SinkSettings
from sinks.clickhouse import apply_migrations, connect
from sinks.consumer import Route, TopicSink
from sinks.corrections import LateCorrections
from sinks.dashboard import create_dashboard_router
from sinks.host_check import LOOPBACK_HOSTS, HostCheck
from sinks.query import create_query_app
from sinks.reader import Reader, read_limits
from sinks.rows import (
    AGGREGATE_COLUMNS,
    ALERT_COLUMNS,
    EVENT_COLUMNS,
    aggregate_rows,
    alert_rows,
    event_rows,
)
from sinks.writer import BatchWriter

log = logging.getLogger("cosnap.sink")
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


def sink_health(client: Client, sink: TopicSink) -> ServiceHealth:
    """The sink's report: unhealthy when ClickHouse does not answer a ping (on chDB the ping
    waits for an insert in progress), else the consumer's own report. Blocks up to 2 s."""
    report = sink.health()
    if client.ping(timeout=2):
        return report
    problems = ["ClickHouse does not answer a ping", *report.problems]
    return report.model_copy(update={"status": "unhealthy", "problems": problems})


def run_sink(settings: SinkSettings) -> None:
    """Blocks until SIGTERM or SIGINT, then inserts what it holds, commits, and returns."""
    client = connect(settings.resolved_clickhouse_url)
    applied = apply_migrations(client, settings.clickhouse_database)
    if applied:
        log.info("applied migrations %s", ", ".join(applied))
    db = settings.clickhouse_database
    topics = settings.topics
    sink = TopicSink(
        bootstrap=settings.kafka_bootstrap,
        group_id=f"{topics.internal}sink",
        routes=[
            Route(topics.events, event_rows, BatchWriter(client, f"{db}.events", EVENT_COLUMNS)),
            Route(
                topics.aggregates, aggregate_rows, BatchWriter(client, f"{db}.aggregates", AGGREGATE_COLUMNS)
            ),
            Route(topics.alerts, alert_rows, BatchWriter(client, f"{db}.alerts", ALERT_COLUMNS)),
        ],
        dead_letter_topic=topics.dead_letter,
        max_rows=settings.sink_batch_rows,
        max_wait_s=settings.sink_flush_ms / 1000,
        corrections=LateCorrections(client, db, topics.late, topics.events),
    )

    server = None
    if settings.embedded_clickhouse:
        # Reads get sessions of their own (read-only, limited), so they never queue behind inserts.
        reader = Reader(settings.resolved_clickhouse_url, read_limits(settings))
        app = create_query_app(reader, query_token(settings), lambda: sink_health(client, sink))
        where = urlparse(settings.query_url)
        app.include_router(create_dashboard_router(reader, where.hostname))
        app.add_middleware(
            HostCheck, allowed_hosts={*LOOPBACK_HOSTS, where.hostname or ""}, paths=["/v1/query"]
        )
        add_metrics_route(app)
        config = uvicorn.Config(
            app,
            host=where.hostname or "127.0.0.1",
            port=where.port or 80,
            log_level="warning",
            log_config=None,  # uvicorn's records go to the root logger's handler, as JSON
        )
        server = uvicorn.Server(config)
        threading.Thread(target=server.run, name="query-service", daemon=True).start()
    else:
        serve_status(settings.metrics_host, settings.sink_metrics_port, lambda: sink_health(client, sink))

    def _stop(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: flushing and stopping", signum)
        sink.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        sink.run()
    finally:
        if server is not None:
            server.should_exit = True
