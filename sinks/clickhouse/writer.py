"""Batched inserts: rows are added as they are consumed and inserted in one go on flush.

Rows are JSONEachRow lines, so ClickHouse parses them in C++ (faster than a columnar insert of
Python values: docs/findings.md). They are handed over in chunks of LINES_PER_CHUNK, not joined
into one block first, and the tables' replacing keys are left to merges and FINAL rather than
applied to each inserted block (`optimize_on_insert=0`): BENCHMARKS.md, "Sink".

A batch is never held back by one of its rows. When ClickHouse refuses an insert for what the
rows hold (`CONTENT_ERRORS`), the batch is split in halves, and halves of the halves, until every
row has either landed or been refused on its own; the refused ones are handed back to be
dead-lettered. Any other failure (the store down, out of memory or disk, a timeout) is transient:
the rows not yet inserted are kept for the next try. An insert is all or nothing (an INSERT of
fewer rows than `max_insert_block_size`, a million, is one block), so a refused half left nothing
behind.
"""

from __future__ import annotations

import re
import time
from bisect import bisect_right
from dataclasses import dataclass

from clickhouse_connect.driver.client import Client

from sinks.clickhouse.errors import SinkError
from sinks.clickhouse.metrics import BATCH_ROWS, INSERT_ERRORS, INSERT_SECONDS, ROWS_INSERTED

INSERT_SETTINGS = {
    "date_time_input_format": "best_effort",
    "input_format_skip_unknown_fields": "1",
    # Every table the sink writes is a ReplacingMergeTree read with FINAL (or through a view that
    # reads it FINAL): collapsing each block's copies at insert too cost a third of the insert's
    # CPU and changed no answer.
    "optimize_on_insert": "0",
}
LINES_PER_CHUNK = 2000

# ClickHouse errors that are about the rows inserted, not the store, by name: clickhouse-connect
# sets it on its exceptions (`name`), from chDB and from a server alike; else it is the last
# "(NAME)" of the message, where ClickHouse puts it.
CONTENT_ERRORS = frozenset(
    {
        "CANNOT_PARSE_TEXT",  # 6
        "INCORRECT_NUMBER_OF_COLUMNS",  # 7
        "CANNOT_PARSE_ESCAPE_SEQUENCE",  # 25
        "CANNOT_PARSE_QUOTED_STRING",  # 26
        "CANNOT_PARSE_INPUT_ASSERTION_FAILED",  # 27: a value of the wrong JSON type
        "CANNOT_READ_ALL_DATA",  # 33
        "CANNOT_PARSE_DATE",  # 38
        "CANNOT_PARSE_DATETIME",  # 41
        "TYPE_MISMATCH",  # 53
        "ARGUMENT_OUT_OF_BOUND",  # 69: a decimal too big for Decimal(38, 9), such as 0E+30
        "CANNOT_CONVERT_TYPE",  # 70
        "CANNOT_PARSE_NUMBER",  # 72
        "INCORRECT_DATA",  # 117
        "TOO_LARGE_ARRAY_SIZE",  # 128
        "CANNOT_READ_ARRAY_FROM_TEXT",  # 130
        "TOO_LARGE_STRING_SIZE",  # 131
        "SIZES_OF_ARRAYS_DONT_MATCH",  # 190
        "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE",  # 321
        "CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN",  # 349
        "CANNOT_PARSE_UUID",  # 376
        "DECIMAL_OVERFLOW",  # 407
        "CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING",  # 441
        "CANNOT_PARSE_BOOL",  # 467
        "CANNOT_READ_MAP_FROM_TEXT",  # 563
        "CANNOT_PARSE_IPV4",  # 675
        "CANNOT_PARSE_IPV6",  # 676
        "UNKNOWN_ELEMENT_OF_ENUM",  # 691
    }
)
# A batch whose rows fall in more than `max_partitions_per_insert_block` (100) months: each half
# is smaller. TOO_MANY_PARTS (252) also names a table whose merges lag, which is transient, so
# this one is told apart by its message.
SPLITTABLE_MESSAGES = ("Too many partitions for single INSERT block",)

_ERROR_NAME = re.compile(r"\(([A-Z][A-Z0-9_]+)\)")
_MESSAGE_END = re.compile(r"\s*:?\s*(?:\(in file/uri |While executing |\(version )")
MAX_REASON_CHARS = 1000


def error_name(exc: BaseException) -> str | None:
    """ClickHouse's name of the error (`ARGUMENT_OUT_OF_BOUND`), when there is one."""
    name = getattr(exc, "name", None)
    if isinstance(name, str) and name:
        return name
    names = _ERROR_NAME.findall(str(exc))
    return names[-1] if names else None


def refused_for_content(exc: BaseException) -> bool:
    """Whether ClickHouse refused an insert for the rows it holds (else: a transient failure)."""
    return error_name(exc) in CONTENT_ERRORS or any(message in str(exc) for message in SPLITTABLE_MESSAGES)


def engine_message(exc: BaseException) -> str:
    """The engine's own words for a refused insert, without the driver's wrapping, the temporary
    file chDB parsed, the server's version and URL: `Decimal value is too big: ...
    (ARGUMENT_OUT_OF_BOUND)`, at most MAX_REASON_CHARS characters."""
    text = str(exc)
    start = text.rfind("DB::Exception: ")
    if start >= 0:
        text = text[start + len("DB::Exception: ") :]
    text = " ".join(_MESSAGE_END.split(text, maxsplit=1)[0].split()).rstrip(" :")
    name = error_name(exc)
    if name and f"({name})" not in text:
        text = f"{text} ({name})"
    return text[:MAX_REASON_CHARS]


@dataclass(frozen=True, slots=True)
class RefusedRow:
    """A row ClickHouse refused for its content, the record it came from, and why."""

    row: bytes
    reason: str  # the engine's message (engine_message)
    partition: int
    offset: int
    index: int  # the row's place among the rows built from its record


class BatchWriter:
    """Rows bound for one table. `add` never blocks; `flush` blocks for the insert, hands back the
    rows refused for their content, and raises SinkError on a transient failure, keeping the rows
    not inserted for the next try."""

    def __init__(self, client: Client, table: str, columns: list[str], min_free_bytes: int = 0) -> None:
        self._client = client
        self.table = table
        self._columns = columns
        # ClickHouse refuses the insert (NOT_ENOUGH_SPACE, a store failure: retried) while the
        # disk has less free: the room a merge in flight still writes into is never the sink's.
        self._settings = INSERT_SETTINGS | (
            {"min_free_disk_bytes_to_perform_insert": str(min_free_bytes)} if min_free_bytes else {}
        )
        self._lines: list[bytes] = []
        # Where the lines came from, one entry per run of lines of one record: the position of
        # its first line in `_lines`, and (partition, offset, index of that line in the record).
        self._starts: list[int] = []
        self._sources: list[tuple[int, int, int]] = []
        self._first_added = 0.0
        name = table.rsplit(".", 1)[-1]
        self._inserted, self._batches = ROWS_INSERTED.labels(name), BATCH_ROWS.labels(name)
        self._insert_seconds, self._errors = INSERT_SECONDS.labels(name), INSERT_ERRORS.labels(name)

    def add(self, lines: list[bytes], partition: int = -1, offset: int = -1) -> None:
        """Queue the rows built from the record at `partition`/`offset`."""
        if not self._lines:
            self._first_added = time.monotonic()
        self._starts.append(len(self._lines))
        self._sources.append((partition, offset, 0))
        self._lines.extend(lines)

    @property
    def pending(self) -> int:
        return len(self._lines)

    def due(self, max_rows: int, max_wait_s: float) -> bool:
        """True when the batch is big enough or its oldest row has waited long enough."""
        return len(self._lines) >= max_rows or (
            bool(self._lines) and time.monotonic() - self._first_added >= max_wait_s
        )

    def _insert(self, lines: list[bytes]) -> None:
        chunks = (
            b"\n".join(lines[low : low + LINES_PER_CHUNK]) + b"\n"
            for low in range(0, len(lines), LINES_PER_CHUNK)
        )
        with self._insert_seconds.time():
            self._client.raw_insert(
                self.table,
                self._columns,
                insert_block=chunks,
                fmt="JSONEachRow",
                settings=self._settings,
            )
        self._inserted.inc(len(lines))
        self._batches.observe(len(lines))

    def _source(self, position: int) -> tuple[int, int, int]:
        run = bisect_right(self._starts, position) - 1
        partition, offset, index = self._sources[run]
        return partition, offset, index + position - self._starts[run]

    def _keep(self, positions: list[int]) -> None:
        """Keep only the lines at `positions` (ascending), with their sources."""
        lines: list[bytes] = []
        starts: list[int] = []
        sources: list[tuple[int, int, int]] = []
        previous, previous_run = -2, -1
        for position in positions:
            run = bisect_right(self._starts, position) - 1
            if run != previous_run or position != previous + 1:
                partition, offset, index = self._sources[run]
                starts.append(len(lines))
                sources.append((partition, offset, index + position - self._starts[run]))
            lines.append(self._lines[position])
            previous, previous_run = position, run
        self._lines, self._starts, self._sources = lines, starts, sources

    def flush(self) -> list[RefusedRow]:
        """Insert every pending row; return the rows ClickHouse refused for their content (no
        longer pending). A refused insert is split in halves until each row landed or was refused
        alone: k bad rows among n cost about 2k·log2(n) inserts."""
        if not self._lines:
            return []
        spans = [(0, len(self._lines))]  # to insert, last first
        refused: list[tuple[int, str]] = []
        while spans:
            low, high = spans.pop()
            try:
                self._insert(self._lines[low:high])
            except Exception as exc:  # any driver or engine failure
                if not refused_for_content(exc):
                    self._errors.inc()
                    kept = [p for span in [*spans, (low, high)] for p in range(*span)]
                    kept += [position for position, _ in refused]  # refused again next time
                    if len(kept) < len(self._lines):  # some landed: keep the others only
                        self._keep(sorted(kept))
                    raise SinkError(f"insert into {self.table} failed: {exc}") from exc
                if high - low == 1:
                    refused.append((low, engine_message(exc)))
                else:
                    middle = (low + high) // 2
                    spans += [(middle, high), (low, middle)]
        rows = [RefusedRow(self._lines[p], reason, *self._source(p)) for p, reason in refused]
        self._lines, self._starts, self._sources = [], [], []
        return rows
