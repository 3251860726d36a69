"""The sink loop: consume topics, batch rows per table, insert, then commit offsets.

Offsets are committed only after every row consumed so far has been inserted, so a crash at
any point replays (never loses) records; the tables' replacing keys make a replay harmless.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from kafka import KafkaConsumer, KafkaProducer
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError

from schemas.health import ServiceHealth
from schemas.records import (
    MAX_HEADER_REQUEST_IDS,
    dead_letter_raw_bytes,
    distinct_request_ids,
    request_ids_header,
    request_ids_in,
)
from sinks.errors import SinkError
from sinks.metrics import DEAD_LETTERS
from sinks.writer import BatchWriter

log = logging.getLogger("cosnap.sink")

RowBuilder = Callable[[bytes, int, int], list[bytes]]


@dataclass(slots=True)
class Origin:
    """Where the rows waiting for a table's next insert came from: the offsets consumed per
    partition and the requests the records' headers name (bounded), for the log line and the
    Sentry event of a failed insert."""

    offsets: dict[int, tuple[int, int]] = field(default_factory=dict)  # partition -> first, last
    request_ids: list[str] = field(default_factory=list)

    def add(self, record: ConsumerRecord) -> None:
        first, _ = self.offsets.get(record.partition, (record.offset, 0))
        self.offsets[record.partition] = (first, record.offset)
        if len(self.request_ids) < MAX_HEADER_REQUEST_IDS:
            self.request_ids += request_ids_in(record.headers)

    def context(self, topic: str, writer: BatchWriter) -> dict[str, Any]:
        return {
            "topic": topic,
            "table": writer.table,
            "rows": writer.pending,
            "offsets": {str(p): list(span) for p, span in sorted(self.offsets.items())},
            "request_ids": distinct_request_ids(self.request_ids),
        }

    def clear(self) -> None:
        self.offsets, self.request_ids = {}, []


@dataclass(frozen=True, slots=True)
class Route:
    topic: str
    build_rows: RowBuilder
    writer: BatchWriter
    origin: Origin = field(default_factory=Origin)


class TopicSink:
    """Runs until `stop()`; `run()` blocks the calling thread."""

    def __init__(
        self,
        *,
        bootstrap: str,
        group_id: str,
        routes: list[Route],
        dead_letter_topic: str,
        max_rows: int,
        max_wait_s: float,
    ) -> None:
        self._routes = {route.topic: route for route in routes}
        self._dead_letter_topic = dead_letter_topic
        self._max_rows = max_rows
        self._max_wait_s = max_wait_s
        self._stopping = threading.Event()
        # What /health reports, read from the query service's threads: each is replaced whole.
        self._partitions: list[str] = []
        self._flushed_at: float | None = None  # wall time of the last flush that inserted every row
        self._insert_error: str | None = None  # why the inserts of the current flush fail
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=group_id,
            client_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=8 * 1024 * 1024,
            # A sink killed without leaving the group holds its partitions until this runs out.
            session_timeout_ms=10_000,
            heartbeat_interval_ms=3_000,
        )
        # No rebalance listener: rows of a revoked partition stay buffered and are inserted with
        # the next batch, while its new owner replays them from the last commit; the replacing
        # keys of the tables collapse the two copies. A commit covers owned partitions only.
        self._consumer.subscribe(list(self._routes))
        self._dead_letters = KafkaProducer(
            bootstrap_servers=bootstrap, acks="all", client_id=f"{group_id}-dlq"
        )

    def stop(self) -> None:
        self._stopping.set()

    def health(self) -> ServiceHealth:
        """The consumer's side of the sink's /health: degraded while inserts fail. Any thread."""
        problems = [f"inserts failing: {self._insert_error}"] if self._insert_error else []
        return ServiceHealth(
            service="sink",
            status="degraded" if problems else "healthy",
            problems=problems,
            details={
                "partitions": self._partitions,
                "pending_rows": {route.writer.table: route.writer.pending for route in self._routes.values()},
                "flushed_at": self._flushed_at,
            },
        )

    def _due(self) -> bool:
        return any(route.writer.due(self._max_rows, self._max_wait_s) for route in self._routes.values())

    def flush_and_commit(self) -> None:
        """Insert every pending row, then commit what was consumed. Retries failed inserts with
        backoff until they succeed or the sink is stopped (then nothing is committed)."""
        delay = 0.2
        failures = 0
        for route in self._routes.values():
            while True:
                try:
                    route.writer.flush()
                    route.origin.clear()
                    break
                except SinkError as exc:
                    self._insert_error = str(exc)
                    context = route.origin.context(route.topic, route.writer)
                    if self._stopping.is_set():
                        log.error(
                            "stopping with %d rows not inserted: %s", route.writer.pending, exc, extra=context
                        )
                        return
                    failures += 1
                    # The first failure goes to Sentry with its traceback; the retries are warnings.
                    log.log(
                        logging.ERROR if failures == 1 else logging.WARNING,
                        "%s; retrying in %.1fs",
                        exc,
                        delay,
                        exc_info=failures == 1,
                        extra=context,
                    )
                    time.sleep(delay)
                    delay = min(delay * 2, 10.0)
        self._insert_error, self._flushed_at = None, time.time()
        try:
            self._consumer.commit()
        except KafkaError as exc:
            # The rows are in ClickHouse; an offset not committed only means they are consumed
            # and inserted again (collapsed by the replacing keys). Broker outages and a group
            # that rebalanced meanwhile (CommitFailedError) both land here; the loop goes on.
            log.warning("offset commit failed, rows will be replayed: %r", exc)

    def _dead_letter(self, record: ConsumerRecord, exc: Exception) -> None:
        topic, partition, offset, value = record.topic, record.partition, record.offset, record.value
        request_ids = request_ids_in(record.headers)
        log.error(
            "undecodable record %s[%d]@%d: %s",
            topic,
            partition,
            offset,
            exc,
            exc_info=exc,
            extra={"topic": topic, "partition": partition, "offset": offset, "request_ids": request_ids},
        )
        DEAD_LETTERS.labels(topic).inc()
        dead_letter = {
            "v": 1,
            "project": None,
            "request_id": f"{topic}:{partition}:{offset}",
            "received_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "index": None,
            "reason": f"sink could not decode the record: {exc}",
            "raw": dead_letter_raw_bytes(value),
        }
        self._dead_letters.send(
            self._dead_letter_topic, orjson.dumps(dead_letter), headers=[request_ids_header(request_ids)]
        ).get(timeout=30)

    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    polled = self._consumer.poll(timeout_ms=100, max_records=2000)
                except KafkaError as exc:  # the client reconnects by itself; keep asking
                    log.warning("poll failed: %r", exc)
                    time.sleep(1)
                    continue
                self._partitions = sorted(f"{tp.topic}[{tp.partition}]" for tp in self._consumer.assignment())
                for tp, records in polled.items():
                    route = self._routes[tp.topic]
                    for record in records:
                        try:
                            rows = route.build_rows(record.value, record.partition, record.offset)
                        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
                            self._dead_letter(record, exc)
                            continue
                        route.writer.add(rows)
                        route.origin.add(record)
                if self._due():
                    self.flush_and_commit()
            self.flush_and_commit()
        finally:
            self._consumer.close(autocommit=False)
            self._dead_letters.close(timeout=10)
