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

from cosnap_metrics.status import add_metrics_route, serve_status
from schemas.health import ServiceHealth
from schemas.settings import SinkSettings
from sinks.clickhouse import apply_migrations, connect
from sinks.consumer import Route, TopicSink
from sinks.dashboard import create_dashboard_router
from sinks.query import create_query_app
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


def query_token(settings: SinkSettings) -> str:
    """The token of the query service, created on first start (mode 0600) and then kept."""
    path = settings.query_token_file
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    path.touch(mode=0o600)
    path.write_text(token + "\n")
    return token


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
    )

    server = None
    if settings.embedded_clickhouse:
        app = create_query_app(client, query_token(settings), lambda: sink_health(client, sink))
        where = urlparse(settings.query_url)
        app.include_router(create_dashboard_router(client, where.hostname))
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
