"""The sink loop: consume topics, batch rows per table, insert, then commit offsets.

Offsets are committed only after every row consumed so far has been inserted or, when
ClickHouse refused it for its content, written to the dead-letter topic; so a crash at any point
replays (never loses) records, and the tables' replacing keys make a replay harmless. One bad
row never holds back the others (sinks/clickhouse/writer.py); only a transient failure is retried.

Every call to Kafka that can block has a deadline (`KAFKA_CALL_TIMEOUT_MS`): kafka-python's
`commit()` without one retries for as long as the coordinator is unreachable, spinning a core,
and a sink stopped while Kafka is down would never return (docs/findings.md).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from kafka import KafkaProducer
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition
from pydantic import ValidationError

from plumbing.backoff import Backoff
from plumbing.consumer_group import GroupConsumer
from plumbing.outage import Outage, watch_kafka
from plumbing.sentry import record_span, sampled_trace
from schemas.health import ServiceHealth
from schemas.records import (
    MAX_HEADER_REQUEST_IDS,
    DeadLetter,
    distinct_request_ids,
    request_ids_header,
    request_ids_in,
)
from sinks.clickhouse.corrections import LateCorrections
from sinks.clickhouse.errors import SinkError
from sinks.clickhouse.metrics import DEAD_LETTERS
from sinks.clickhouse.writer import BatchWriter, RefusedRow

log = logging.getLogger("cosnap.sink")

RowBuilder = Callable[[bytes, int, int], list[bytes]]
MAX_TRACES_PER_INSERT = 10  # sampled traces an insert is recorded in, at most
KAFKA_CALL_TIMEOUT_MS = 3_000  # commit, committed offsets, positions, close
RECONNECT_BACKOFF_MAX_MS = 1_000  # a broker back from an outage is tried again within a second


def _row_fields(row: bytes) -> dict[str, str]:
    """The `project` and `request_id` of a row (built by sinks/clickhouse/rows.py), when it names them."""
    try:
        parsed = orjson.loads(row)
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(parsed, dict):
        return {}
    return {k: v for k in ("project", "request_id") if isinstance(v := parsed.get(k), str)}


@dataclass(slots=True)
class Origin:
    """Where the rows waiting for a table's next insert came from: the offsets consumed per
    partition and the requests the records' headers name (bounded), for the log line and the
    Sentry event of a failed insert."""

    offsets: dict[int, tuple[int, int]] = field(default_factory=dict)  # partition -> first, last
    request_ids: list[str] = field(default_factory=list)
    # Sampled Sentry traces the records carry (plumbing.sentry): the insert is a span of each.
    traces: list[dict[str, str]] = field(default_factory=list)

    def add(self, record: ConsumerRecord) -> None:
        first, _ = self.offsets.get(record.partition, (record.offset, 0))
        self.offsets[record.partition] = (first, record.offset)
        if len(self.request_ids) < MAX_HEADER_REQUEST_IDS:
            self.request_ids += request_ids_in(record.headers)
        trace = sampled_trace(record.headers)
        if trace is not None and len(self.traces) < MAX_TRACES_PER_INSERT and trace not in self.traces:
            self.traces.append(trace)

    def context(self, topic: str, writer: BatchWriter) -> dict[str, Any]:
        return {
            "topic": topic,
            "table": writer.table,
            "rows": writer.pending,
            "offsets": {str(p): list(span) for p, span in sorted(self.offsets.items())},
            "request_ids": distinct_request_ids(self.request_ids),
        }

    def clear(self) -> None:
        self.offsets, self.request_ids, self.traces = {}, [], []

    def traced(self, table: str, rows: int, start: datetime) -> None:
        """Record the insert of `rows` into `table`, begun at `start` and done now, in each
        sampled trace its records carry."""
        end = datetime.now(UTC)
        for trace in self.traces:
            record_span(trace, "db.insert", f"insert {table}", start, end, table=table, rows=rows)


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
        corrections: LateCorrections | None = None,
    ) -> None:
        self._routes = {route.topic: route for route in routes}
        self._corrections = corrections
        self._dead_letter_topic = dead_letter_topic
        self._max_rows = max_rows
        self._max_wait_s = max_wait_s
        self._stopping = threading.Event()
        self._bootstrap = bootstrap
        self.kafka = Outage("Kafka", log, self.held)
        # Offsets of the last commit that went through: a stop with nothing new to commit is clean
        # even when Kafka is down.
        self._committed: dict[TopicPartition, int] = {}
        # What /health reports, read from other threads (the query service's or the status
        # server's): each is replaced whole.
        self._partitions: list[str] = []
        self._flushed_at: float | None = None  # wall time of the last flush that inserted every row
        self._insert_error: str | None = None  # why the inserts of the current flush fail
        self._consumer = GroupConsumer(
            bootstrap_servers=bootstrap,
            group_id=group_id,
            client_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=8 * 1024 * 1024,
            # A sink killed without leaving the group holds its partitions until this runs out.
            session_timeout_ms=10_000,
            heartbeat_interval_ms=3_000,
            reconnect_backoff_max_ms=RECONNECT_BACKOFF_MAX_MS,
        )
        # No rebalance listener: rows of a revoked partition stay buffered and are inserted with
        # the next batch, while its new owner replays them from the last commit; the replacing
        # keys of the tables collapse the two copies. A commit covers owned partitions only.
        self._consumer.subscribe([*self._routes, *([corrections.topic] if corrections else [])])
        self._dead_letters = KafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            client_id=f"{group_id}-dlq",
            reconnect_backoff_max_ms=RECONNECT_BACKOFF_MAX_MS,
        )

    def stop(self) -> None:
        self._stopping.set()

    def held(self) -> str:
        """What the sink holds that is not in ClickHouse yet, in words ("" when nothing). Any thread."""
        rows = sum(route.writer.pending for route in self._routes.values())
        late = self._corrections.pending if self._corrections is not None else 0
        return ", ".join(
            [*([f"{rows} rows not inserted"] if rows else []), *([f"{late} late records"] if late else [])]
        )

    def health(self) -> ServiceHealth:
        """The consumer's side of the sink's /health: degraded while inserts fail or Kafka is
        unreachable (the problem says since when). Any thread."""
        problems = [f"inserts failing: {self._insert_error}"] if self._insert_error else []
        kafka = self.kafka.problem()
        if kafka is not None:
            problems.append(kafka)
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
        if self._corrections is not None and self._corrections.due(self._max_wait_s):
            return True
        return any(route.writer.due(self._max_rows, self._max_wait_s) for route in self._routes.values())

    def flush_and_commit(self) -> bool:
        """Insert every pending row, dead-letter the rows ClickHouse refused for their content,
        then commit what was consumed. Retries failed inserts and dead-letter writes with backoff
        until they succeed or the sink is stopped (then nothing is committed). True when every
        row is written and the offsets are committed."""
        failures = 0
        for route in self._routes.values():
            started, rows = datetime.now(UTC), route.writer.pending
            for delay in Backoff().delays():
                try:
                    refused = route.writer.flush()
                    break
                except SinkError as exc:
                    self._insert_error = str(exc)
                    context = route.origin.context(route.topic, route.writer)
                    if self._stopping.is_set():
                        log.error(
                            "stopping with %d rows not inserted: %s", route.writer.pending, exc, extra=context
                        )
                        return False
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
            if refused and not self._dead_letter_refused(route, refused):
                return False  # stopped before Kafka took them: nothing committed, the records replay
            route.origin.traced(route.writer.table, rows, started)
            route.origin.clear()
        self._insert_error = None
        if self._corrections is not None and not self._flush_corrections(self._corrections):
            return False
        self._flushed_at = time.time()
        return self._commit()

    def _commit(self) -> bool:
        """Commit the offsets consumed, unless the last commit holds them already; True when
        they are committed."""
        try:
            offsets = self._offsets_to_commit()
            if {tp: at.offset for tp, at in offsets.items()} == self._committed:
                return True
            self._consumer.commit(offsets, timeout_ms=KAFKA_CALL_TIMEOUT_MS)
        except KafkaError as exc:
            # The rows are in ClickHouse; an offset not committed only means they are consumed
            # and inserted again (collapsed by the replacing keys). Broker outages (the commit
            # times out) and a group that rebalanced meanwhile (CommitFailedError) both land
            # here; the loop goes on.
            log.warning("offset commit failed, rows will be replayed: %r", exc)
            return False
        self._committed = {tp: at.offset for tp, at in offsets.items()}
        return True

    def _flush_corrections(self, corrections: LateCorrections) -> bool:
        """Write the corrections of the late records whose events are stored. A failure leaves
        them pending (their late partitions are committed only up to them) and the other
        tables go on; False only when dead letters could not be written before a stop."""
        try:
            refused = corrections.flush(self._stored_through(corrections.events_topic))
        except SinkError as exc:
            self._insert_error = str(exc)
            log.warning("%s; %d late records wait for the next flush", exc, corrections.pending)
            return True
        except KafkaError as exc:  # the committed offsets of the events partitions, unreadable
            log.warning("%r; %d late records wait for the next flush", exc, corrections.pending)
            return True
        if refused:  # rows built here from checked values: a refusal is a bug, set aside and logged
            letters: list[tuple[DeadLetter, list[str]]] = [
                (
                    DeadLetter.of_record(
                        corrections.topic,
                        row.partition,
                        row.offset,
                        project=_row_fields(row.row).get("project"),
                        index=row.index,
                        reason=f"ClickHouse refused a correction row: {row.reason}",
                        raw=row.row,
                    ),
                    [],
                )
                for row in refused
            ]
            log.error("ClickHouse refused %d correction rows: %s", len(refused), refused[0].reason)
            self._send_dead_letters(letters)
            DEAD_LETTERS.labels(corrections.topic, "refused").inc(len(refused))
        return True

    def _stored_through(self, events_topic: str) -> Callable[[int], int | None]:
        """The sink group's committed offset of an events partition (None: none yet)."""

        def committed(partition: int) -> int | None:
            offset = self._consumer.committed(
                TopicPartition(events_topic, partition), timeout_ms=KAFKA_CALL_TIMEOUT_MS
            )
            return None if offset is None else int(offset)

        return committed

    def _offsets_to_commit(self) -> dict[TopicPartition, OffsetAndMetadata]:
        """The position of every assigned partition, except that a late partition is committed
        only up to its oldest record whose corrections are not written yet."""
        offsets = {}
        for tp in self._consumer.assignment():
            offset = self._consumer.position(tp, timeout_ms=KAFKA_CALL_TIMEOUT_MS)
            if self._corrections is not None and tp.topic == self._corrections.topic:
                pending = self._corrections.first_pending(tp.partition)
                if pending is not None:
                    offset = min(offset, pending)
            offsets[tp] = OffsetAndMetadata(offset, "", -1)
        return offsets

    def _send_dead_letters(self, letters: list[tuple[DeadLetter, list[str]]]) -> None:
        """Write dead letters and wait until Kafka took every one (raises KafkaError if not)."""
        sent = [
            self._dead_letters.send(
                self._dead_letter_topic,
                key=letter.project.encode() if letter.project is not None else None,
                value=letter.model_dump_json().encode(),
                headers=[request_ids_header(request_ids)],
            )
            for letter, request_ids in letters
        ]
        for future in sent:
            future.get(timeout=30)

    def _dead_letter_refused(self, route: Route, refused: list[RefusedRow]) -> bool:
        """Dead-letter the rows ClickHouse refused; retried until Kafka takes them. False when
        the sink was stopped first."""
        table = route.writer.table
        log.error(
            "ClickHouse refused %d rows for %s, dead-lettered: %s",
            len(refused),
            table,
            refused[0].reason,
            extra=route.origin.context(route.topic, route.writer)
            | {"refused": [f"{route.topic}[{r.partition}]@{r.offset}#{r.index}" for r in refused[:10]]},
        )
        letters = []
        for row in refused:
            fields = _row_fields(row.row)
            letter = DeadLetter.of_record(
                route.topic,
                row.partition,
                row.offset,
                project=fields.get("project"),
                index=row.index,
                reason=f"ClickHouse refused the row for {table}: {row.reason}",
                raw=row.row,
            )
            letters.append((letter, [fields["request_id"]] if "request_id" in fields else []))
        for delay in Backoff().delays():
            try:
                self._send_dead_letters(letters)
                break
            except KafkaError as exc:
                if self._stopping.is_set():
                    log.error("stopping with %d refused rows not dead-lettered: %r", len(refused), exc)
                    return False
                log.warning("dead-letter write failed, retrying in %.1fs: %r", delay, exc)
                time.sleep(delay)
        DEAD_LETTERS.labels(route.topic, "refused").inc(len(refused))
        return True

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
        DEAD_LETTERS.labels(topic, "undecodable").inc()
        dead_letter = DeadLetter.of_record(
            topic,
            partition,
            offset,
            project=None,
            reason=f"sink could not decode the record: {exc}",
            raw=value,
        )
        self._send_dead_letters([(dead_letter, request_ids)])

    def run(self) -> bool:
        """Consume until `stop()`, then write out what is held. True when everything consumed
        was inserted and committed; False says the next start consumes some of it again."""
        watch_kafka(self._bootstrap, self.kafka)
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
                    if self._corrections is not None and tp.topic == self._corrections.topic:
                        for record in records:
                            try:
                                self._corrections.add(record.partition, record.offset, record.value)
                            except ValidationError as exc:
                                self._dead_letter(record, exc)
                        continue
                    route = self._routes[tp.topic]
                    for record in records:
                        try:
                            rows = route.build_rows(record.value, record.partition, record.offset)
                        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
                            self._dead_letter(record, exc)
                            continue
                        route.writer.add(rows, record.partition, record.offset)
                        route.origin.add(record)
                if self._due():
                    self.flush_and_commit()
            clean = self.flush_and_commit() and not self.held()
            if not clean:
                log.error("stopped with %s", self.held() or "offsets not committed (the rows are inserted)")
            return clean
        finally:
            self._consumer.close(autocommit=False, timeout_ms=KAFKA_CALL_TIMEOUT_MS)
            self._dead_letters.close(timeout=KAFKA_CALL_TIMEOUT_MS / 1000)
