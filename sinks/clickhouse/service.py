"""The sink service: apply the DDL, then consume the pipeline's topics and insert them."""

from __future__ import annotations

import logging

from clickhouse_connect.driver.client import Client

from plumbing.clickhouse import connect
from plumbing.stopping import EXIT_UNFLUSHED, Shutdown
from schemas.health import ServiceHealth
from schemas.settings import SinkSettings
from sinks.clickhouse.consumer import Route, TopicSink
from sinks.clickhouse.corrections import LateCorrections
from sinks.clickhouse.ddl import apply_migrations
from sinks.clickhouse.metrics import STORE_MEMORY
from sinks.clickhouse.retention import apply_retention
from sinks.clickhouse.rows import (
    AGGREGATE_COLUMNS,
    ALERT_ACK_COLUMNS,
    ALERT_COLUMNS,
    ALERT_DELIVERY_COLUMNS,
    EVENT_COLUMNS,
    TRAIT_COLUMNS,
    aggregate_rows,
    alert_rows,
    event_rows,
    record_row,
    trait_rows,
)
from sinks.clickhouse.writer import BatchWriter

log = logging.getLogger("cosnap.sink")


def open_store(settings: SinkSettings) -> Client:
    """A client on the configured ClickHouse, with every migration applied and the tables'
    retention set as configured. On chDB, the engine's memory figures are read through it at each
    scrape of the sink's /metrics (sinks/clickhouse/metrics.py, StoreMemory): the client's lock
    makes a scrape wait for an insert in progress. A server's client is not shared so (its
    session would refuse the second of two concurrent queries), and a server is watched apart."""
    client = connect(settings.resolved_clickhouse_url)
    applied = apply_migrations(client, settings.clickhouse_database)
    if applied:
        log.info("applied migrations %s", ", ".join(applied))
    apply_retention(client, settings)
    if settings.embedded_clickhouse:
        STORE_MEMORY.watch(client, settings.clickhouse_database)
    return client


def create_sink(settings: SinkSettings, client: Client) -> TopicSink:
    """The consumer of the events, aggregates, alerts, alert deliveries and acknowledgements,
    traits and late topics, writing through `client`."""
    db = settings.clickhouse_database
    topics = settings.topics
    return TopicSink(
        bootstrap=settings.kafka_bootstrap,
        group_id=f"{topics.internal}sink",
        routes=[
            Route(topics.events, event_rows, BatchWriter(client, f"{db}.events", EVENT_COLUMNS)),
            Route(
                topics.aggregates, aggregate_rows, BatchWriter(client, f"{db}.aggregates", AGGREGATE_COLUMNS)
            ),
            Route(topics.alerts, alert_rows, BatchWriter(client, f"{db}.alerts", ALERT_COLUMNS)),
            Route(
                topics.alert_deliveries,
                record_row,
                BatchWriter(client, f"{db}.alert_deliveries", ALERT_DELIVERY_COLUMNS),
            ),
            Route(topics.alert_acks, record_row, BatchWriter(client, f"{db}.alert_acks", ALERT_ACK_COLUMNS)),
            Route(topics.traits, trait_rows, BatchWriter(client, f"{db}.traits", TRAIT_COLUMNS)),
        ],
        dead_letter_topic=topics.dead_letter,
        max_rows=settings.sink_batch_rows,
        max_wait_s=settings.sink_flush_ms / 1000,
        corrections=LateCorrections(client, db, topics.late, topics.events),
    )


def sink_health(client: Client, sink: TopicSink) -> ServiceHealth:
    """The sink's report: unhealthy when ClickHouse does not answer a ping (on chDB the ping
    waits for an insert in progress), else the consumer's own report. Blocks up to 2 s."""
    report = sink.health()
    if client.ping(timeout=2):
        return report
    problems = ["ClickHouse does not answer a ping", *report.problems]
    return report.model_copy(update={"status": "unhealthy", "problems": problems})


def run_until_signalled(sink: TopicSink) -> int:
    """Consume until SIGTERM or SIGINT, then insert what is held, commit, and return the exit
    status: 0 when all of it was written out, EXIT_UNFLUSHED when not (plumbing/stopping.py)."""
    Shutdown(lambda _signum: sink.stop(), sink.held).install()
    return 0 if sink.run() else EXIT_UNFLUSHED
