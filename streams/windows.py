"""Event-time windows: 10-second panes per series, rolled up into 1-minute and 1-hour windows,
each emitted once, final, when the watermark passes its end plus the grace period.

An event adds to its pane only; a closed pane is merged into its minute and its hour. Every
granularity therefore holds exactly the same events, and an event is late (routed to the
dead-letter topic, never folded in) when its pane has closed.

Plain Python driven by the Faust agent (streams/app.py) and by unit tests without Kafka.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from schemas.records import GRANULARITY_SECONDS, Granularity
from streams.series import SeriesKey, SeriesResolver
from streams.sketch import DDSketch
from streams.watermark import Watermark

PANE: Granularity = "10s"
ROLLUPS: tuple[Granularity, ...] = ("1m", "1h")
_LABELS, _QS = ("p50", "p90", "p95", "p99"), (0.5, 0.9, 0.95, 0.99)


Point = float | Decimal | int  # a value as min/max keep it: performance float, revenue Decimal, else 1


@dataclass(slots=True)
class Accumulator:
    """count, exact sum, min and max of a series in one window; a sketch for performance series.

    The sum is exact (Decimal); min and max keep the values as sent (a float for performance),
    which is exact too and a quarter of a Decimal's memory.
    """

    count: int
    total: Decimal
    low: Point
    high: Point
    sketch: DDSketch | None

    @classmethod
    def first(cls, total: Decimal, point: Point, with_sketch: bool) -> Accumulator:
        acc = cls(1, total, point, point, None)
        if with_sketch:
            acc.sketch = DDSketch()
            acc.sketch.add(float(point))
        return acc

    def add(self, total: Decimal, point: Point) -> None:
        self.count += 1
        self.total += total
        if point < self.low:
            self.low = point
        elif point > self.high:
            self.high = point
        if self.sketch is not None:
            self.sketch.add(float(point))

    def merge(self, other: Accumulator) -> None:
        self.count += other.count
        self.total += other.total
        self.low = min(self.low, other.low)
        self.high = max(self.high, other.high)
        if other.sketch is not None:
            if self.sketch is None:
                self.sketch = DDSketch()
            self.sketch.merge(other.sketch)

    def to_state(self) -> list[Any]:
        sketch = None if self.sketch is None else self.sketch.to_wire()
        return [self.count, str(self.total), _point_state(self.low), _point_state(self.high), sketch]

    @classmethod
    def from_state(cls, state: list[Any]) -> Accumulator:
        count, total, low, high, sketch = state
        restored_sketch = None if sketch is None else DDSketch.from_wire(sketch)
        return cls(count, Decimal(total), _point(low), _point(high), restored_sketch)

    def copy(self) -> Accumulator:
        sketch = None
        if self.sketch is not None:
            sketch = DDSketch()
            sketch.merge(self.sketch)
        return Accumulator(self.count, self.total, self.low, self.high, sketch)


def _point_state(point: Point) -> float | int | str:
    return str(point) if isinstance(point, Decimal) else point


def _point(state: float | int | str) -> Point:
    return Decimal(state) if isinstance(state, str) else state


def epoch(timestamp: str) -> float:
    """Epoch seconds of an ISO 8601 timestamp."""
    return datetime.fromisoformat(timestamp).timestamp()


def iso(seconds: float) -> str:
    """The ISO 8601 UTC timestamp (with Z) of epoch seconds."""
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


class EventTimeWindows:
    """Open windows of every granularity for the partitions a worker owns.

    `add_envelope` is called for every record and returns the events too late for their pane;
    `close_ready` is called on a timer and returns every window (of any granularity) the
    watermark closed, each exactly once.
    """

    def __init__(self, watermark: Watermark, grace_s: float, series: SeriesResolver) -> None:
        self._watermark = watermark
        self._grace = grace_s
        self._series = series
        self._pane = GRANULARITY_SECONDS[PANE]
        # granularity -> window start -> series -> accumulator: the windows of one start close
        # together, and no (series, start) tuple is kept per window.
        self._open: dict[Granularity, dict[int, dict[SeriesKey, Accumulator]]] = {
            g: {} for g in (PANE, *ROLLUPS)
        }
        self._closing: dict[Granularity, list[int]] = {g: [] for g in (PANE, *ROLLUPS)}  # heaps of starts
        self.late_events = 0
        self._pane_starts: dict[str, int] = {}  # timestamp prefix -> pane start; bounded below

    def _closed_before(self) -> float:
        """Windows whose end + grace is at or before the watermark are closed."""
        return self._watermark.current - self._grace

    def add_envelope(self, partition: int, envelope: dict[str, Any], now: float) -> list[dict[str, Any]]:
        project = envelope["project"]
        closed_before = self._closed_before()
        panes = self._open[PANE]
        late: list[dict[str, Any]] = []
        newest = ""  # the greatest timestamp: same-format ISO strings order like the times they name
        size = self._pane
        pane_starts = self._pane_starts
        for event in envelope["events"]:
            timestamp = event["timestamp"]
            # The ingest writes `YYYY-MM-DDTHH:MM:SS.mmmZ`: its first 18 characters name the pane.
            start = pane_starts.get(timestamp[:18]) if len(timestamp) == 24 else None
            if start is None:
                event_time = epoch(timestamp)
                start = int(event_time // size) * size
                if len(timestamp) == 24:
                    pane_starts[timestamp[:18]] = start
            if start + size <= closed_before:
                late.append(event)
                continue
            if timestamp > newest:
                newest = timestamp
            key, total, point = self._series.resolve(project, event)
            pane = panes.get(start)
            if pane is None:
                pane = panes[start] = {}
                heapq.heappush(self._closing[PANE], start)
            acc = pane.get(key)
            if acc is None:
                pane[key] = Accumulator.first(total, point, key[1] == "performance")
            else:
                acc.add(total, point)
        if newest:
            self._watermark.observe(partition, epoch(newest), now)
        self.late_events += len(late)
        return late

    def _pop_closed(
        self, granularity: Granularity, closed_before: float
    ) -> list[tuple[SeriesKey, int, Accumulator]]:
        size = GRANULARITY_SECONDS[granularity]
        heap, windows = self._closing[granularity], self._open[granularity]
        out: list[tuple[SeriesKey, int, Accumulator]] = []
        while heap and heap[0] + size <= closed_before:
            start = heapq.heappop(heap)
            out.extend((key, start, acc) for key, acc in windows.pop(start).items())
        return out

    def _roll_up(self, key: SeriesKey, pane_start: int, pane: Accumulator) -> None:
        for granularity in ROLLUPS:
            size = GRANULARITY_SECONDS[granularity]
            start = pane_start // size * size
            windows = self._open[granularity].get(start)
            if windows is None:
                windows = self._open[granularity][start] = {}
                heapq.heappush(self._closing[granularity], start)
            acc = windows.get(key)
            if acc is None:
                windows[key] = pane.copy()
            else:
                acc.merge(pane)

    def close_ready(self, now: float, chunk: int = 10_000) -> Iterator[list[dict[str, Any]]]:
        """Advance the watermark to wall time `now` and yield every window it closed, as records
        of schemas.records.WindowAggregate, in lists of at most `chunk` (so that a tick closing
        100,000 series never holds them all as records at once). Consume it to the end."""
        self._watermark.advance(now)
        closed_before = self._closed_before()
        emitted_at = iso(now)
        if len(self._pane_starts) > 10_000:  # one entry per pane seen: drop them now and then
            self._pane_starts.clear()
        for granularity in (PANE, *ROLLUPS):
            closed = self._pop_closed(granularity, closed_before)
            if granularity == PANE:
                for key, start, acc in closed:
                    self._roll_up(key, start, acc)
            steps = self._funnel_steps(closed)
            for first in range(0, len(closed), chunk):
                yield self._records(granularity, closed[first : first + chunk], emitted_at, steps)

    def _funnel_steps(
        self, closed: list[tuple[SeriesKey, int, Accumulator]]
    ) -> dict[tuple[str, str, int], dict[int, int]]:
        """(project, funnel, window start) -> step index -> count, for step-to-step ratios."""
        steps: dict[tuple[str, str, int], dict[int, int]] = defaultdict(dict)
        for (project, kind, name, _currency, _dims), start, acc in closed:
            if kind == "conversion":
                index = self._series.step_index.get((project, name))
                if index is not None:
                    steps[(project, name.split(":", 1)[0], start)][index] = acc.count
        return steps

    def _records(
        self,
        granularity: Granularity,
        closed: list[tuple[SeriesKey, int, Accumulator]],
        emitted_at: str,
        steps: dict[tuple[str, str, int], dict[int, int]],
    ) -> list[dict[str, Any]]:
        size = GRANULARITY_SECONDS[granularity]
        records = []
        bounds: dict[int, tuple[str, str]] = {}
        for key, start, acc in closed:
            project, kind, name, currency, dims = key
            window = bounds.get(start)
            if window is None:
                window = bounds[start] = (iso(start), iso(start + size))
            record: dict[str, Any] = {
                "v": 1,
                "project": project,
                "type": kind,
                "name": name,
                "currency": currency,
                "dims": dict(dims),
                "series_id": self._series.id_of(key),
                "granularity": granularity,
                "window_start": window[0],
                "window_end": window[1],
                "count": acc.count,
                "sum": str(acc.total),
                "min": str(acc.low),
                "max": str(acc.high),
                "mean": float(acc.total) / acc.count,
                "emitted_at": emitted_at,
            }
            if acc.sketch is not None:
                for label, value in zip(_LABELS, acc.sketch.quantiles(_QS), strict=True):
                    record[label] = value
                record["sketch"] = acc.sketch.to_wire()
            if kind == "conversion":
                index = self._series.step_index.get((project, name))
                if index is not None:
                    record["step_index"] = index
                    previous = steps.get((project, name.split(":", 1)[0], start), {}).get(index - 1)
                    if previous:
                        record["ratio_to_previous"] = acc.count / previous
            records.append(record)
        return records

    def to_state(self) -> dict[str, Any]:
        """Everything needed to resume exactly: open windows, watermark, series bookkeeping."""
        return {
            "windows": {
                granularity: [
                    [*key[:4], [list(d) for d in key[4]], start, acc.to_state()]
                    for start, series in windows.items()
                    for key, acc in series.items()
                ]
                for granularity, windows in self._open.items()
            },
            "watermark": self._watermark.to_state(),
            "series": self._series.to_state(),
            "late_events": self.late_events,
        }

    def restore(self, state: dict[str, Any], now: float) -> None:
        """Resume from `to_state()` (called before any event of the restored partition)."""
        for granularity, rows in state["windows"].items():
            windows: dict[int, dict[SeriesKey, Accumulator]] = {}
            for project, kind, name, currency, dims, start, acc in rows:
                key: SeriesKey = (project, kind, name, currency, tuple((k, v) for k, v in dims))
                windows.setdefault(start, {})[key] = Accumulator.from_state(acc)
            self._open[granularity] = windows
            self._closing[granularity] = sorted(windows)
        self._watermark.restore(state["watermark"], now)
        self._series.restore(state["series"])
        self.late_events = state["late_events"]

    @property
    def open_windows(self) -> int:
        return sum(len(series) for windows in self._open.values() for series in windows.values())
