"""Prometheus metrics of the sink. The query service serves them at `GET /metrics` (chDB), or the
sink's status endpoint (a ClickHouse server); `table` is the table's name without its database."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

from clickhouse_connect.driver.client import Client
from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("cosnap.sink")

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


# The engine's own memory figures (`system.metrics`): what it tracks, and each cache it keeps.
STORE_MEMORY_METRICS = (
    "MemoryTracking",
    "MergesMutationsMemoryTracking",
    "MarkCacheBytes",
    "PrimaryIndexCacheBytes",
    "UncompressedCacheBytes",
    "IndexMarkCacheBytes",
    "QueryConditionCacheBytes",
    "QueryCacheBytes",
    "CompiledExpressionCacheBytes",
    "PageCacheBytes",
)
_STORE_MEMORY_SQL = (
    "SELECT metric, value FROM system.metrics WHERE metric IN ("  # noqa: S608
    + ", ".join(f"'{name}'" for name in STORE_MEMORY_METRICS)
    + ")"
)
_STORE_PARTS_SQL = (
    "SELECT table, countIf(active), countIf(NOT active), sumIf(rows, active), "
    "sumIf(primary_key_bytes_in_memory_allocated, active), sumIf(marks_bytes, active) "
    "FROM system.parts WHERE database = {db:String} GROUP BY table"
)
# chDB's allocator (jemalloc, its own: Python's objects are not in it), one line of its report.
_ALLOCATOR = re.compile(
    r"Allocated: (\d+), active: (\d+), metadata: (\d+)[^\n]*?, "
    r"resident: (\d+), mapped: (\d+), retained: (\d+)"
)
_ALLOCATOR_KINDS = ("allocated", "active", "metadata", "resident", "mapped", "retained")


class StoreMemory(Collector):
    """The store's memory as ClickHouse reports it, read at each scrape through the sink's client
    (`watch`): `system.metrics` (tracked memory and each cache), the parts of the sink's database
    per table (active and outdated; the active ones' rows, primary index and marks in memory) and,
    on chDB, its allocator's totals. Nothing before `watch`; a store that does not answer gives no samples."""

    def __init__(self) -> None:
        self._client: Client | None = None
        self._database = ""

    def watch(self, client: Client, database: str) -> None:
        self._client, self._database = client, database

    def describe(self) -> Iterable[Metric]:
        return []  # collected only at scrape time: each scrape asks the store

    def collect(self) -> Iterable[Metric]:
        client = self._client
        if client is None:
            return []
        memory = GaugeMetricFamily(
            "cosnap_sink_store_memory_bytes",
            "The store's tracked memory (MemoryTracking) and each of its caches, by ClickHouse's "
            "name in system.metrics",
            labels=["metric"],
        )
        parts = GaugeMetricFamily(
            "cosnap_sink_store_parts",
            "Parts by table: active, and outdated (replaced by a merge, kept until old_parts_lifetime)",
            labels=["table", "state"],
        )
        part_figures = GaugeMetricFamily(
            "cosnap_sink_store_part_bytes",
            "Of the active parts: primary index and marks held in memory, by table",
            labels=["table", "kind"],
        )
        rows = GaugeMetricFamily(
            "cosnap_sink_store_rows", "Rows in the active parts, by table", labels=["table"]
        )
        try:
            for name, value in client.query(_STORE_MEMORY_SQL).result_rows:
                memory.add_metric([str(name)], float(value))
            found = client.query(_STORE_PARTS_SQL, parameters={"db": self._database}).result_rows
            for table, active, outdated, total, index, marks in found:
                parts.add_metric([table, "active"], float(active))
                parts.add_metric([table, "outdated"], float(outdated))
                rows.add_metric([table], float(total))
                part_figures.add_metric([table, "primary_index"], float(index))
                part_figures.add_metric([table, "marks"], float(marks))
        except Exception as exc:  # the store is down or closed: the scrape goes on without these
            log.debug("store memory not read: %r", exc)
            return []
        return [memory, parts, rows, part_figures, *self._allocator(client)]

    @staticmethod
    def _allocator(client: Client) -> list[Metric]:
        """chDB's jemalloc totals ([] where the engine has no such report)."""
        allocator = GaugeMetricFamily(
            "cosnap_sink_store_allocator_bytes",
            "chDB's allocator (jemalloc) totals: allocated, active, metadata, resident, mapped, retained",
            labels=["kind"],
        )
        try:
            report = client.query("SELECT stats FROM system.jemalloc_stats").result_rows
        except Exception:  # a server without the table, or the store gone
            return []
        found = _ALLOCATOR.search(str(report[0][0])) if report else None
        if found is None:
            return []
        for kind, value in zip(_ALLOCATOR_KINDS, found.groups(), strict=True):
            allocator.add_metric([kind], float(value))
        return [allocator]


STORE_MEMORY = StoreMemory()
REGISTRY.register(STORE_MEMORY)
