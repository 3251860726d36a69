"""Tumbling event-time windows per series, emitted once, final, when the watermark passes
their end plus the grace period.

Plain Python driven by the Faust agent (streams/app.py) and by unit tests without Kafka.
Events are the wire dicts of an envelope (schemas.records.Envelope).
"""

from __future__ import annotations

import hashlib
import heapq
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from schemas.records import GRANULARITY_SECONDS, Granularity
from streams.watermark import Watermark

Dims = tuple[tuple[str, str], ...]
SeriesKey = tuple[str, str, str, str, Dims]  # project, type, name, currency, dims
_ONE = Decimal(1)


@dataclass(slots=True)
class Accumulator:
    count: int
    total: Decimal
    low: Decimal
    high: Decimal

    def add(self, value: Decimal) -> None:
        self.count += 1
        self.total += value
        if value < self.low:
            self.low = value
        elif value > self.high:
            self.high = value


def series_and_value(project: str, event: dict[str, Any]) -> tuple[SeriesKey, Decimal]:
    """The series an event belongs to (DESIGN §3.4 `name`) and the value it adds.

    Revenue adds its amount per currency; performance its value per unit; conversion and
    feature events add 1 (their sum is their count).
    """
    kind = event["type"]
    if kind == "revenue":
        return (project, kind, event["name"], event["currency"], ()), Decimal(event["amount"])
    if kind == "performance":
        return (project, kind, event["metric"], "", (("unit", event["unit"]),)), Decimal(repr(event["value"]))
    if kind == "conversion":
        return (project, kind, f"{event['funnel']}:{event['step']}", "", ()), _ONE
    return (project, kind, event["feature"], "", (("action", event["action"]),)), _ONE


def series_id(key: SeriesKey) -> str:
    """A stable id of a series, the same in every process and release."""
    project, kind, name, currency, dims = key
    text = "\x1f".join([project, kind, name, currency, *(f"{k}={v}" for k, v in dims)])
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def _epoch(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp).timestamp()


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


class TumblingWindows:
    """Open windows of one granularity for the partitions a worker owns.

    `add_envelope` is called for every record and returns the events too late for their
    window; `close_ready` is called on a timer and returns each closed window exactly once.
    """

    def __init__(self, granularity: Granularity, watermark: Watermark, grace_s: float) -> None:
        self.granularity = granularity
        self._size = GRANULARITY_SECONDS[granularity]
        self._watermark = watermark
        self._grace = grace_s
        self._open: dict[tuple[SeriesKey, int], Accumulator] = {}
        self._closing: list[tuple[int, SeriesKey]] = []  # heap of (window_start, series)
        self.late_events = 0

    def _closed_before(self) -> float:
        """Windows whose end + grace is at or before the watermark are closed."""
        return self._watermark.current - self._grace

    def add_envelope(self, partition: int, envelope: dict[str, Any], now: float) -> list[dict[str, Any]]:
        project = envelope["project"]
        closed_before = self._closed_before()
        late: list[dict[str, Any]] = []
        newest = float("-inf")
        for event in envelope["events"]:
            event_time = _epoch(event["timestamp"])
            start = int(event_time // self._size) * self._size
            if start + self._size <= closed_before:
                late.append(event)
                continue
            newest = max(newest, event_time)
            key, value = series_and_value(project, event)
            acc = self._open.get((key, start))
            if acc is None:
                self._open[(key, start)] = Accumulator(1, value, value, value)
                heapq.heappush(self._closing, (start, key))
            else:
                acc.add(value)
        if newest > float("-inf"):
            self._watermark.observe(partition, newest, now)
        self.late_events += len(late)
        return late

    def close_ready(self, now: float) -> list[dict[str, Any]]:
        """Advance the watermark to wall time `now`; pop and return every window it closed."""
        self._watermark.advance(now)
        closed_before = self._closed_before()
        emitted_at = _iso(now)
        out = []
        while self._closing and self._closing[0][0] + self._size <= closed_before:
            start, key = heapq.heappop(self._closing)
            acc = self._open.pop((key, start))
            project, kind, name, currency, dims = key
            out.append(
                {
                    "v": 1,
                    "project": project,
                    "type": kind,
                    "name": name,
                    "currency": currency,
                    "dims": dict(dims),
                    "series_id": series_id(key),
                    "granularity": self.granularity,
                    "window_start": _iso(start),
                    "window_end": _iso(start + self._size),
                    "count": acc.count,
                    "sum": str(acc.total),
                    "min": str(acc.low),
                    "max": str(acc.high),
                    "emitted_at": emitted_at,
                }
            )
        return out

    @property
    def open_windows(self) -> int:
        return len(self._open)
