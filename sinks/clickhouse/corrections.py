"""Late events into correction rows: the late records of the streams worker
(`metrics.internal.late`, schemas.records.LateEvents) become rows of `metrics.aggregates` with a
`part` of their own, and rows of `metrics.late_events`.

A late record names the events record it came from (events partition p, offset o). Its events
count in the windows only if that record holds the first copy of each: `metrics.events` keeps
every copy until it merges them, so the lowest (partition, offset) of an event id there says
which copy was first — the one the worker counted, on time or late, and the one `events FINAL`
keeps. The record is therefore resolved only once the sink's consumer group has inserted (and
committed) the events partition past o, and then always the same way: a replay writes the same
rows with the same key (`part` = p << 40 | o + 1), which replace, never add.

`add` keeps a record; `flush` resolves the records whose events are stored, writes their rows and
returns; `first_pending` tells the consumer how far it may commit each late partition.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson
from clickhouse_connect.driver.client import Client

from schemas.records import GRANULARITY_SECONDS, Granularity, LateEvents
from sinks.clickhouse.errors import SinkError
from sinks.clickhouse.writer import BatchWriter, RefusedRow

CORRECTION_COLUMNS = [
    "project", "type", "name", "currency", "dims", "series_id", "granularity", "window_start", "window_end",
    "part", "count", "sum", "min", "max", "mean", "sketch_positive", "sketch_negative", "sketch_zeros",
    "step_index", "emitted_at",
]  # fmt: skip

LATE_EVENT_COLUMNS = [
    "project", "event_id", "type", "name", "series_id", "timestamp", "received_at", "folded_at", "delay_s",
    "counted", "kafka_partition", "kafka_offset",
]  # fmt: skip

PART_OFFSET_BITS = 40  # part = events partition << 40 | offset + 1; 0 is the on-time row
# Ids per lookup of first copies: a query's text is limited (max_query_size, 256 KiB), and a
# backfill makes tens of thousands of late events ready at once.
IDS_PER_LOOKUP = 2_000


def part_of(partition: int, offset: int) -> int:
    """The `part` of the correction rows of events record `offset` of events partition `partition`."""
    return partition << PART_OFFSET_BITS | (offset + 1)


@dataclass(slots=True)
class _Correction:
    """What the counted late events of one record add to one window of one series."""

    count: int = 0
    total: Decimal = Decimal(0)
    low: Decimal | None = None
    high: Decimal | None = None
    positive: dict[int, int] = field(default_factory=dict)
    negative: dict[int, int] = field(default_factory=dict)
    zeros: int = 0

    def add(self, value: Decimal, sketch_bin: tuple[int, int] | None) -> None:
        self.count += 1
        self.total += value
        self.low = value if self.low is None or value < self.low else self.low
        self.high = value if self.high is None or value > self.high else self.high
        if sketch_bin is not None:
            sign, index = sketch_bin
            store = self.positive if sign > 0 else self.negative if sign < 0 else None
            if store is None:
                self.zeros += 1
            else:
                store[index] = store.get(index, 0) + 1


def _text(value: Decimal) -> str:
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def correction_rows(late: LateEvents, counted: set[str]) -> tuple[list[bytes], list[bytes]]:
    """The rows of `metrics.aggregates` (corrections) and of `metrics.late_events` of a late
    record whose events in `counted` are first copies."""
    windows: dict[tuple[str, Granularity, int], _Correction] = {}
    late_rows = []
    folded_at = late.folded_at.timestamp()
    for event in late.events:
        is_counted = event.event_id in counted
        counted.discard(event.event_id)  # a second copy in the same record counts once
        series = late.series[event.series_id]
        seconds = event.timestamp.timestamp()
        late_rows.append(
            orjson.dumps(
                {
                    "project": late.project,
                    "event_id": event.event_id,
                    "type": series.type,
                    "name": series.name,
                    "series_id": event.series_id,
                    "timestamp": event.timestamp.isoformat(),
                    "received_at": (event.received_at or event.timestamp).isoformat(),
                    "folded_at": late.folded_at.isoformat(),
                    "delay_s": round(folded_at - seconds, 3),
                    "counted": int(is_counted),
                    "kafka_partition": late.partition,
                    "kafka_offset": late.offset,
                }
            )
        )
        if not is_counted:
            continue
        for granularity, size in GRANULARITY_SECONDS.items():
            start = int(seconds // size) * size
            key = (event.series_id, granularity, start)
            found = windows.get(key)
            if found is None:
                found = windows[key] = _Correction()
            found.add(event.value, event.bin)
    part = part_of(late.partition, late.offset)
    rows = []
    for (series_id, granularity, start), correction in windows.items():
        series = late.series[series_id]
        size = GRANULARITY_SECONDS[granularity]
        row: dict[str, Any] = {
            "project": late.project,
            "type": series.type,
            "name": series.name,
            "currency": series.currency,
            "dims": series.dims,
            "series_id": series_id,
            "granularity": granularity,
            "window_start": start,
            "window_end": start + size,
            "part": part,
            "count": correction.count,
            "sum": _text(correction.total),
            "min": _text(correction.low or Decimal(0)),
            "max": _text(correction.high or Decimal(0)),
            "mean": float(correction.total) / correction.count,
            "sketch_positive": correction.positive,
            "sketch_negative": correction.negative,
            "sketch_zeros": correction.zeros,
            "step_index": series.step_index,
            "emitted_at": late.folded_at.isoformat(),
        }
        rows.append(orjson.dumps(row, option=orjson.OPT_NON_STR_KEYS))
    return rows, late_rows


@dataclass(frozen=True, slots=True)
class _Pending:
    partition: int  # of the late topic
    offset: int  # of the late topic
    late: LateEvents


class LateCorrections:
    """Late records waiting until their events are stored, then written as corrections. Called
    from the sink's consumer thread only."""

    def __init__(
        self, client: Client, database: str, topic: str, events_topic: str, min_free_bytes: int = 0
    ) -> None:
        self.topic = topic
        self.events_topic = events_topic
        self._client = client
        self._database = database
        self._pending: list[_Pending] = []
        self._tried_at = 0.0  # when `flush` last ran with records pending
        self.corrections = BatchWriter(client, f"{database}.aggregates", CORRECTION_COLUMNS, min_free_bytes)
        self.late_events = BatchWriter(client, f"{database}.late_events", LATE_EVENT_COLUMNS, min_free_bytes)

    def add(self, partition: int, offset: int, value: bytes) -> None:
        """Keep a late record (raises pydantic's ValidationError for one that is not)."""
        if not self._pending:
            self._tried_at = time.monotonic()
        self._pending.append(_Pending(partition, offset, LateEvents.model_validate_json(value)))

    def due(self, max_wait_s: float) -> bool:
        """Records wait, and `flush` has not tried them for `max_wait_s`."""
        return bool(self._pending) and time.monotonic() - self._tried_at >= max_wait_s

    @property
    def pending(self) -> int:
        return len(self._pending)

    def first_pending(self, partition: int) -> int | None:
        """The offset of the oldest record of late partition `partition` not written yet."""
        return min((p.offset for p in self._pending if p.partition == partition), default=None)

    def flush(self, stored_through: Callable[[int], int | None]) -> list[RefusedRow]:
        """Write the corrections of every record whose events partition the sink has stored
        past the record's offset (`stored_through(p)`: the sink group's committed offset of
        events partition p, None if never). Raises sinks.clickhouse.errors.SinkError when an insert fails
        (those records stay pending). Returns the rows ClickHouse refused (none expected)."""
        self._tried_at = time.monotonic()
        ready: list[_Pending] = []
        waiting: list[_Pending] = []
        stored: dict[int, int | None] = {}
        blocked: set[int] = set()  # late partitions with an earlier record still waiting
        for pending in self._pending:
            events_partition = pending.late.partition
            if events_partition not in stored:
                stored[events_partition] = stored_through(events_partition)
            through = stored[events_partition]
            if pending.partition in blocked or through is None or through <= pending.late.offset:
                blocked.add(pending.partition)
                waiting.append(pending)
            else:
                ready.append(pending)
        if not ready:
            return []
        try:
            first_copies = self._first_copies(ready)
        except Exception as exc:  # the store does not answer: the records wait for the next flush
            raise SinkError(f"reading first copies from {self._database}.events failed: {exc}") from exc
        for pending in ready:
            late = pending.late
            mine = {
                event.event_id
                for event in late.events
                if first_copies.get((late.project, event.event_id)) == (late.partition, late.offset)
            }
            rows, late_rows = correction_rows(late, mine)
            self.corrections.add(rows, pending.partition, pending.offset)
            self.late_events.add(late_rows, pending.partition, pending.offset)
        refused = self.corrections.flush() + self.late_events.flush()
        self._pending = waiting
        return refused

    def _first_copies(self, ready: list[_Pending]) -> dict[tuple[str, str], tuple[int, int]]:
        """(project, event_id) -> the (partition, offset) of its first copy in `metrics.events`."""
        ids: dict[str, set[str]] = {}
        for pending in ready:
            ids.setdefault(pending.late.project, set()).update(e.event_id for e in pending.late.events)
        found: dict[tuple[str, str], tuple[int, int]] = {}
        for project, event_ids in ids.items():
            ordered = sorted(event_ids)
            for first in range(0, len(ordered), IDS_PER_LOOKUP):
                result = self._client.query(
                    f"SELECT event_id, min((kafka_partition, kafka_offset)) FROM {self._database}.events "  # noqa: S608
                    "WHERE project = %(project)s AND event_id IN %(ids)s GROUP BY event_id",
                    parameters={"project": project, "ids": ordered[first : first + IDS_PER_LOOKUP]},
                )
                for event_id, (partition, offset) in result.result_rows:
                    found[(project, event_id)] = (partition, offset)
        return found
