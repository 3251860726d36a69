"""Files of events for `cosnap-metrics import`: NDJSON or CSV with a header, plain or gzip.

A file is read as a stream of numbered records, each an event object ready to post to
`/v1/events` or a problem found before posting (a line that is not JSON, a CSV row of the wrong
width, bytes that are not UTF-8). Nothing else is validated here: the ingest API does that, so an
imported event passes exactly the checks a client's does.

- **gzip** is recognised by its magic bytes (1f 8b), whatever the file is called.
- **NDJSON**: one event object per line; blank lines are skipped (their numbers still count).
- **CSV**: the first row names the columns, each an event field (`type`, `event_id`,
  `timestamp`, `user_id`, `amount`, `value`, ...) or `tags.<key>` for a tag. A file whose first
  character (after a UTF-8 byte order mark and blank space) is `{` is NDJSON, anything else CSV.

CSV cells are text. An empty cell means the field (or tag) is absent. `value` and `step_index`
are sent as JSON numbers when they spell one (`12.5`, `1e3`, `2`), `timestamp` as epoch seconds
when it is a number and as text (RFC 3339) otherwise; every other column, `amount` included (an
exact decimal, every digit kept), is sent as its text. A cell that does not convert stays text, so
the API rejects it with its own reason.

An event without `event_id` gets one derived from its line number and content,
`imp-` + the first 40 hex digits of SHA-256 over `"<line>\\n"` followed by the event's JSON with
sorted keys (`orjson.OPT_SORT_KEYS`): the same file imported again posts the same ids, so the
events table keeps one row per event; two identical lines stay two events; appending to a file
keeps the ids of the lines already there.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import hashlib
import io
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import TypeAdapter, ValidationError

from schemas.errors import CosnapError
from schemas.events import ConversionEvent, FeatureEvent, PerformanceEvent, RevenueEvent, TagKey

Format = Literal["ndjson", "csv"]
GZIP_MAGIC = b"\x1f\x8b"
TAG_PREFIX = "tags."
_BOM = codecs.BOM_UTF8
_NUMBER = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")
_INTEGER = re.compile(r"^[+-]?\d+$")
_TAG_KEY = TypeAdapter[str](TagKey)
# Every field an event may have, from the models the API validates with.
EVENT_FIELDS = frozenset(
    name
    for model in (RevenueEvent, ConversionEvent, FeatureEvent, PerformanceEvent)
    for name in model.model_fields
) - {"tags"}


class EventFileError(CosnapError):
    """A file that cannot be imported at all (unreadable, a CSV header naming no event field)."""


@dataclass(frozen=True, slots=True)
class Record:
    """One event of a file: `line` is where it starts (1-based). `event` is what is posted, or
    None when `problem` says why the record could not be read; then `raw` is what was read (the
    line's text, or a CSV row's cells) and `detail` says more."""

    line: int
    event: Any
    problem: str | None = None
    raw: Any = None
    detail: str = ""


def event_id_for(line: int, event: dict[str, Any]) -> str:
    """The id an event without one gets: stable for the same content at the same line."""
    digest = hashlib.sha256(f"{line}\n".encode() + orjson.dumps(event, option=orjson.OPT_SORT_KEYS))
    return "imp-" + digest.hexdigest()[:40]


def _with_id(line: int, event: Any) -> Any:
    if isinstance(event, dict) and event.get("event_id") is None:
        event = {k: v for k, v in event.items() if k != "event_id"}
        event["event_id"] = event_id_for(line, event)
    return event


def file_digest(path: Path) -> str:
    """SHA-256 of the file's bytes (compressed bytes for gzip): what the resume state is keyed by."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class EventFile:
    """Reads one file. `position` is how far into the file (its bytes on disk) reading got, for
    progress; `size` its length."""

    def __init__(self, path: Path, fmt: Format | None = None) -> None:
        self.path = path
        try:
            self._raw = path.open("rb")
            self.size = path.stat().st_size
        except OSError as exc:
            raise EventFileError(f"{path}: {exc.strerror or exc}") from exc
        self.gzip = self._raw.peek(2)[:2] == GZIP_MAGIC
        self._stream = (
            io.BufferedReader(gzip.GzipFile(fileobj=self._raw, mode="rb"), 1 << 20)
            if self.gzip
            else self._raw
        )
        try:
            head = self._stream.peek(4096).removeprefix(_BOM).lstrip()
        except (OSError, EOFError) as exc:
            self.close()
            raise EventFileError(f"{path}: {exc}") from exc
        self.format: Format = fmt or ("ndjson" if head[:1] == b"{" or not head else "csv")

    @property
    def position(self) -> int:
        return self._raw.tell()

    def close(self) -> None:
        self._stream.close()
        self._raw.close()

    def records(self) -> Iterator[Record]:
        try:
            yield from self._ndjson() if self.format == "ndjson" else self._csv()
        except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
            raise EventFileError(f"{self.path}: {exc}") from exc

    def _ndjson(self) -> Iterator[Record]:
        for line, text in enumerate(self._stream, 1):
            data = text.removeprefix(_BOM) if line == 1 else text
            if not data.strip():
                continue
            try:
                event = orjson.loads(data)
            except orjson.JSONDecodeError as exc:
                yield Record(
                    line, None, "not valid JSON", data.rstrip(b"\r\n").decode(errors="replace"), str(exc)
                )
                continue
            yield Record(line, _with_id(line, event))

    def _lines(self, bad: set[int]) -> Iterator[str]:
        """Decoded lines for the csv module; numbers of lines that are not UTF-8 go to `bad`."""
        for line, data in enumerate(self._stream, 1):
            if line == 1:
                data = data.removeprefix(_BOM)
            try:
                yield data.decode()
            except UnicodeDecodeError:
                bad.add(line)
                yield data.decode(errors="replace")

    def _csv(self) -> Iterator[Record]:
        bad: set[int] = set()
        reader = csv.reader(self._lines(bad), strict=True)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise EventFileError(f"{self.path}: the CSV header cannot be read: {exc}") from exc
        columns = csv_columns(header, self.path)
        start = reader.line_num + 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:  # e.g. a quote left open up to the end of the file
                yield Record(start, None, "not valid CSV", "", str(exc))
                start = reader.line_num + 1
                continue
            line, end = start, reader.line_num
            start = end + 1
            if not row:
                continue
            if bad.intersection(range(line, end + 1)):
                yield Record(line, None, "not valid UTF-8", row)
            elif len(row) != len(columns):
                yield Record(
                    line, None, "wrong number of fields", row, f"{len(row)}, the header has {len(columns)}"
                )
            else:
                yield Record(line, _with_id(line, csv_event(columns, row)))


def csv_columns(header: list[str], path: Path) -> list[tuple[str, str | None]]:
    """(field, tag key or None) per column; EventFileError for a header that is not one of events."""
    columns: list[tuple[str, str | None]] = []
    unknown = []
    for cell in (c.strip() for c in header):
        if cell.startswith(TAG_PREFIX):
            key = cell[len(TAG_PREFIX) :]
            try:
                columns.append(("tags", _TAG_KEY.validate_python(key)))
            except ValidationError:
                unknown.append(cell)
        elif cell in EVENT_FIELDS:
            columns.append((cell, None))
        else:
            unknown.append(cell)
    if unknown:
        raise EventFileError(
            f"{path}: CSV columns {', '.join(repr(c) for c in unknown)} are not event fields "
            f"(name them {', '.join(sorted(EVENT_FIELDS))}, or tags.<key> with a key of letters, "
            "digits and _.:-)"
        )
    names = [f"tags.{key}" if key is not None else field for field, key in columns]
    if len(set(names)) != len(names):
        raise EventFileError(f"{path}: the CSV header names a column twice")
    if "type" not in names:
        raise EventFileError(f"{path}: the CSV header has no `type` column")
    return columns


def _integer(text: str) -> int | str:
    """An integer JSON can carry (orjson: 64 bits), else the text."""
    return int(text) if _INTEGER.match(text) and len(text.lstrip("+-")) <= 18 else text


def _float(text: str) -> float | str:
    number = float(text) if _NUMBER.match(text) else math.nan
    return number if math.isfinite(number) else text


def csv_event(columns: list[tuple[str, str | None]], row: list[str]) -> dict[str, Any]:
    """The event of one CSV row (see the module's docstring for how cells map to JSON)."""
    event: dict[str, Any] = {}
    tags: dict[str, str] = {}
    for (field, tag), cell in zip(columns, row, strict=True):
        if cell == "":
            continue
        if tag is not None:
            tags[tag] = cell
        elif field == "value":
            event[field] = _float(cell)
        elif field == "step_index":
            event[field] = _integer(cell)
        elif field == "timestamp":  # epoch seconds, or RFC 3339 text
            event[field] = _integer(cell) if _INTEGER.match(cell) else _float(cell)
        else:
            event[field] = cell
    if tags:
        event["tags"] = tags
    return event
