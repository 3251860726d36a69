"""Prometheus metrics of the sink. The query service serves them at `GET /metrics` (chDB), or the
sink's status endpoint (a ClickHouse server); `table` is the table's name without its database."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

ROWS_INSERTED = Counter(
    "cosnap_sink_rows_inserted_total", "Rows inserted into ClickHouse, by table", ["table"]
)
BATCH_ROWS = Histogram(
    "cosnap_sink_batch_rows",
    "Rows per insert, by table",
    ["table"],
    buckets=(1, 10, 100, 1000, 5000, 10_000, 50_000, 100_000),
)
INSERT_SECONDS = Histogram(
    "cosnap_sink_insert_duration_seconds",
    "Time of one insert (successful or not), by table",
    ["table"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
INSERT_ERRORS = Counter(
    "cosnap_sink_insert_errors_total",
    "Inserts that failed (the rows are kept and retried), by table",
    ["table"],
)
DEAD_LETTERS = Counter(
    "cosnap_sink_dead_letters_total",
    "Records the sink could not decode (reason undecodable) and rows ClickHouse refused for their"
    " content (reason refused), sent to the dead-letter topic, by the topic they came from",
    ["topic", "reason"],
)
