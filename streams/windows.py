"""Event-time windows: 10-second panes per series, rolled up into 1-minute and 1-hour windows,
each emitted once, final, when the watermark passes its end plus the grace period.

An event adds to its pane only; a closed pane is merged into its minute, and a closed minute
into its hour. Every granularity therefore holds exactly the same events. An event is late when
its pane has closed: it is folded into no window here, and the sink adds it to its windows as a
correction (streams/late.py; docs/architecture.md, "Late events and retries").

Every event passes through `add_envelope` and every window through `close_ready` and the
checkpoints, so the representation is chosen for them: a record's events are first grouped by
pane and series (a `Batch`), and each batch is folded at once, its sums, minimum and maximum
taken in C over a list of values; the alert rules take the same batches. Windows are keyed by
the resolver's `Series` objects, sums are integers of billionths, a performance window builds
its sketch only from its third value on, final records are joined from JSON fragments encoded
once per series, and a checkpoint is one `orjson.dumps` of the live accumulators (see
BENCHMARKS.md).

Plain Python driven by the worker's `Folder` and `Emission` (streams/folding.py, streams/emission.py)
and by unit tests without Kafka.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from itertools import repeat
from operator import attrgetter, truediv
from typing import Any, cast

import orjson

from schemas.numbers import STORE_INTEGER_DIGITS, STORE_SCALE
from schemas.records import GRANULARITY_SECONDS, Granularity
from streams.envelope import EnvelopeView, Event
from streams.series import Series, SeriesKey, SeriesResolver
from streams.sketch import DDSketch
from streams.watermark import Watermark

PANE: Granularity = "10s"
ROLLUPS: tuple[Granularity, ...] = ("1m", "1h")
_INTO: dict[Granularity, Granularity] = {"10s": "1m", "1m": "1h"}  # where a closed window is merged
_LABELS, _QS = ("p50", "p90", "p95", "p99"), (0.5, 0.9, 0.95, 0.99)
NANOS = 1_000_000_000  # a sum is kept in billionths of its unit
# Below this magnitude a float's ulp is under 1e-9, so at most one decimal of nine places rounds
# to it: if `round(v * 1e9) / 1e9 == v`, that decimal is the one its repr (its JSON) shows.
_EXACT_BELOW = 2.0**22
_MIN_SERIES_KEPT = 100_000  # series objects held before forgetting those without open windows
# The ids of counted events are held this long (in event time) after their pane closed, so a
# retry stamped up to this much later than the first copy is still found by the worker; a
# retry that lands in a closed pane is a late event, which the sink checks against every event
# stored (streams/late.py).
DEDUP_HOLD_S = 60
MAX_VALUE = 1e15  # |performance value|: the ingest's bound, which keeps window sums storable

Point = float | Decimal | int  # a value as min/max keep it: a float measurement, an exact Decimal, else 1
Nanos = int | Decimal  # an exact sum in billionths: an int, a Decimal only past nine decimals


def nanos(value: float) -> Nanos:
    """The decimal of a measurement as sent (the shortest repr of the float, which is what JSON
    carried) in billionths: an int when it has at most nine decimals, else an exact Decimal."""
    scaled = round(value * 1e9)
    if -_EXACT_BELOW < value < _EXACT_BELOW and scaled / 1e9 == value:
        return scaled
    return Decimal(repr(value)).scaleb(9)


def sum_nanos(values: list[float], low: float, high: float) -> Nanos:
    """`sum(map(nanos, values))` for values whose minimum and maximum are `low` and `high`: in
    the common case (every value below 2^22 in magnitude, with at most nine decimals) computed
    over the list at once, with no call per value."""
    if low > -_EXACT_BELOW and high < _EXACT_BELOW:
        scaled = [round(value * 1e9) for value in values]
        if list(map(truediv, scaled, repeat(1e9))) == values:
            return sum(scaled)
    return sum(map(nanos, values))


def decimal_nanos(amount: Decimal) -> Nanos:
    """An exact decimal in billionths (an int for at most nine decimals, as revenue has)."""
    scaled = amount.scaleb(9)
    return int(scaled) if scaled == scaled.to_integral_value() else scaled


def amount_problem(amount: Decimal) -> str | None:
    """Why Decimal(38, 9) cannot hold `amount` as written (None: it can). Stricter than
    schemas.numbers.decimal_problem, which judges the normalised value the ingest writes: a
    record written past the ingest keeps its text ("0E+30"), which the store refuses. Reads the
    digits and the exponent only, so no exponent however large can overflow."""
    if not amount.is_finite():
        return f"amount {amount} is not a finite number"
    _, digits, exponent = amount.as_tuple()
    trailing = len(digits) - len(bytes(digits).rstrip(b"\0"))
    significant = len(digits) - trailing
    exponent = cast(int, exponent) + trailing
    if exponent < -STORE_SCALE or significant + exponent > STORE_INTEGER_DIGITS:
        return f"amount {amount} does not fit Decimal(38, 9)"
    return None


def decimal_text(total: Nanos) -> str:
    """A sum in billionths as the plain decimal string a record carries ("12.5", "3")."""
    if isinstance(total, Decimal):
        text = format(total.scaleb(-9), "f")
        return text.rstrip("0").rstrip(".") if "." in text else text
    whole, fraction = divmod(abs(total), NANOS)
    sign = "-" if total < 0 else ""
    return f"{sign}{whole}.{fraction:09d}".rstrip("0") if fraction else f"{sign}{whole}"


@dataclass(slots=True)
class Batch:
    """The events of one record in one (series, pane), summed up once for the windows and the
    alert rules: sums, min and max over a list of values run in C, not per event in Python."""

    series: Series
    start: int
    events: list[Event]
    nanos: Nanos
    low: Point
    high: Point
    points: list[float] | list[Decimal] | None  # the events' values (None: each counts 1)

    @classmethod
    def of(cls, series: Series, start: int, events: list[Event]) -> Batch:
        spec = series.spec
        if spec.value is None:
            return cls(series, start, events, NANOS * len(events), 1, 1, None)  # each counts 1
        if spec.exact:
            amounts: list[Decimal] = list(map(attrgetter(spec.value), events))
            total = sum(map(decimal_nanos, amounts))
            return cls(series, start, events, total, min(amounts), max(amounts), amounts)
        values: list[float] = list(map(attrgetter(spec.value), events))
        low, high = min(values), max(values)
        return cls(series, start, events, sum_nanos(values, low, high), low, high, values)

    def floats(self) -> list[float]:
        """The values as a sketch takes them."""
        if self.points is None:
            return [1.0] * len(self.events)
        if self.series.spec.exact:
            return [float(point) for point in self.points]
        return cast(list[float], self.points)


@dataclass(frozen=True, slots=True)
class Folded:
    """What `add_envelope` did with a record: its events in batches; the events too late for
    their pane, with their series (folded nowhere here: they become corrections, see
    streams/late.py); the events refused with the reason (an event no store column could hold,
    or no ingest would write); how many were copies of an event counted before; and the newest
    event time folded (None: no event was folded)."""

    batches: list[Batch]
    late: list[tuple[Event, Series]]
    refused: list[tuple[Event, str]]
    duplicates: int
    newest: float | None


@dataclass(slots=True)
class Accumulator:
    """count, exact sum, min and max of a series in one window; a sketch if `sketched`.

    The sum is kept in billionths (`nanos`, see `nanos()`): integers add in a fraction of a
    Decimal's time and stay exact. min and max keep the values as sent (a float for
    performance), which is exact too. A sketched accumulator holding at most two values has
    no sketch yet: they are its min and max, and `sketch_of` builds it from them (a window of
    one event costs no sketch, which is most windows of a quiet series).
    """

    count: int
    nanos: Nanos
    low: Point
    high: Point
    sketched: bool
    sketch: DDSketch | None = None

    @property
    def total(self) -> Decimal:
        """The exact sum."""
        return Decimal(self.nanos).scaleb(-9)

    @property
    def mean(self) -> float:
        if isinstance(self.nanos, Decimal):
            return float(self.total) / self.count
        return self.nanos / NANOS / self.count  # int / int: correctly rounded, as float(total)

    @classmethod
    def of_batch(cls, batch: Batch, sketched: bool) -> Accumulator:
        count = len(batch.events)
        acc = cls(count, batch.nanos, batch.low, batch.high, sketched)
        if sketched and count > 2:
            acc.sketch = DDSketch()
            acc.sketch.add_all(batch.floats(), float(batch.low))
        return acc

    def add_batch(self, batch: Batch) -> None:
        count = len(batch.events)
        if self.sketched:
            if self.sketch is not None:
                self.sketch.add_all(batch.floats(), float(batch.low))
            elif self.count + count > 2:
                self.sketch = self.sketch_of()
                self.sketch.add_all(batch.floats(), float(batch.low))
        self.count += count
        self.nanos += batch.nanos
        if batch.low < self.low:
            self.low = batch.low
        if batch.high > self.high:
            self.high = batch.high

    def merge(self, other: Accumulator) -> None:
        if other.sketched and self.count + other.count > 2:
            if self.sketch is None:
                self.sketch = self.sketch_of()
            if other.sketch is None:
                self.sketch.merge(other.sketch_of())
            else:
                self.sketch.merge(other.sketch)
            self.sketched = True
        self.count += other.count
        self.nanos += other.nanos
        self.low = min(self.low, other.low)
        self.high = max(self.high, other.high)

    def sketch_of(self) -> DDSketch:
        """The sketch of the values (built from min and max while there are at most two)."""
        if self.sketch is not None:
            return self.sketch
        values = () if self.count == 0 else (self.low,) if self.count == 1 else (self.low, self.high)
        return DDSketch.of(*[float(v) for v in values])

    def copy(self) -> Accumulator:
        sketch = None
        if self.sketch is not None:
            sketch = DDSketch()
            sketch.merge(self.sketch)
        return Accumulator(self.count, self.nanos, self.low, self.high, self.sketched, sketch)

    def to_state(self) -> list[Any]:
        """A JSON-ready list (the alert engine's checkpoints and those of release 0.1)."""
        sketch = self.sketch_of().to_wire() if self.sketched else None
        return [self.count, str(self.total), _point_state(self.low), _point_state(self.high), sketch]

    @classmethod
    def from_state(cls, state: list[Any]) -> Accumulator:
        count, total, low, high, sketch = state
        restored = None if sketch is None else DDSketch.from_wire(sketch)
        sketched = sketch is not None
        return cls(count, decimal_nanos(Decimal(total)), _point(low), _point(high), sketched, restored)

    @classmethod
    def from_json(cls, fields: dict[str, Any]) -> Accumulator:
        """Read back the accumulator as orjson wrote the dataclass (`EventTimeWindows.to_state`)."""
        total, sketch = fields["nanos"], fields["sketch"]
        return cls(
            fields["count"],
            Decimal(total) if isinstance(total, str) else total,
            _point(fields["low"]),
            _point(fields["high"]),
            fields["sketched"],
            None if sketch is None else DDSketch.from_wire(sketch),
        )


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


@dataclass(frozen=True, slots=True)
class ClosedWindows:
    """Final windows of one granularity, as records for the aggregates topic: (key
    `series_id|granularity|window_start`, value schemas.records.WindowAggregate as JSON)."""

    granularity: Granularity
    records: list[tuple[bytes, bytes]]


Closed = list[tuple[Series, int, Accumulator]]  # (series, window start, accumulator)


class EventTimeWindows:
    """Open windows of every granularity for the partitions a worker owns.

    `add_envelope` is called for every record and returns what it did with its events (`Folded`);
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
        self._open: dict[Granularity, dict[int, dict[Series, Accumulator]]] = {
            g: {} for g in (PANE, *ROLLUPS)
        }
        self._closing: dict[Granularity, list[int]] = {g: [] for g in (PANE, *ROLLUPS)}  # heaps of starts
        self.late_events = 0
        self._pane_starts: dict[str, int] = {}  # timestamp prefix -> pane start; bounded below
        self._series_kept = _MIN_SERIES_KEPT
        # Retries: the ids of the events counted (on time or late) in recent panes, so that a
        # second copy of an event is not counted again. `_held` lists the ids per pane start
        # (late events under the oldest open pane) to forget them DEDUP_HOLD_S after the pane
        # closed; `_held_from` is the lowest record offset whose ids are held, per pane, which
        # a checkpoint records so that a restart reads those records again (`remember`).
        self._seen: set[str] = set()
        self._held: dict[int, list[str]] = {}
        self._held_from: dict[int, int] = {}

    def _closed_before(self) -> float:
        """Windows whose end + grace is at or before the watermark are closed."""
        return self._watermark.current - self._grace

    def add_envelope(self, partition: int, envelope: EnvelopeView, now: float, offset: int = 0) -> Folded:
        """Fold a record's events (at `offset` of events partition `partition`) into their panes:
        first grouped by pane and series, then each group at once (its sums, min and max are
        computed in C over its values). Returns a `Folded`: the batches folded (the alert rules
        take the same), the events whose pane has closed with their series (folded nowhere),
        the events no store column could hold with the reason, how many were copies of events
        counted before (skipped), and the newest event time folded. Never raises for an event's
        content."""
        project = envelope.project
        closed_before = self._closed_before()
        late: list[tuple[Event, Series]] = []
        refused: list[tuple[Event, str]] = []
        duplicates = 0
        newest = ""  # the greatest timestamp: same-format ISO strings order like the times they name
        size = self._pane
        pane_starts = self._pane_starts
        resolve = self._series.resolve
        seen = self._seen
        grouped: dict[int, dict[Series, list[Event]]] = {}
        group: dict[Series, list[Event]] = {}  # the events of an envelope mostly share a pane
        group_start = -1
        for event in envelope.events:
            event_id = event.event_id
            timestamp = event.timestamp
            # The ingest writes `YYYY-MM-DDTHH:MM:SS.mmmZ`: its first 18 characters name the pane.
            start = pane_starts.get(timestamp[:18]) if len(timestamp) == 24 else None
            if start is None:
                try:
                    start = int(epoch(timestamp) // size) * size
                except (ValueError, OverflowError):
                    refused.append((event, f"timestamp {timestamp[:64]!r} is not an RFC 3339 time"))
                    continue
                if len(timestamp) == 24:
                    pane_starts[timestamp[:18]] = start
            if not event_id:
                refused.append((event, "event_id is missing"))
                continue
            if start + size <= closed_before:
                if event_id in seen:
                    duplicates += 1
                else:
                    seen.add(event_id)
                    late.append((event, resolve(project, event)))
                continue
            if timestamp > newest:
                newest = timestamp
            if start != group_start:
                found = grouped.get(start)
                if found is None:
                    found = grouped[start] = {}
                group, group_start = found, start
            series = resolve(project, event)
            events = group.get(series)
            if events is None:
                group[series] = [event]
            else:
                events.append(event)
        batches = []
        panes = self._open[PANE]
        for start, group in grouped.items():
            pane = panes.get(start)
            if pane is None:
                pane = panes[start] = {}
                heapq.heappush(self._closing[PANE], start)
            held = self._hold(start, offset)
            for series, grouped_events in group.items():
                # Copies of counted events are rare: a group is checked against the held ids
                # at once (in C), and filtered event by event only when it holds one.
                ids = [event.event_id for event in grouped_events]
                events = grouped_events
                if seen.isdisjoint(ids):
                    before = len(seen)
                    seen.update(ids)
                    if len(seen) - before != len(ids):  # the same id twice in this group
                        seen.difference_update(ids)
                        events, ids = self._first_copies(grouped_events)
                else:
                    events, ids = self._first_copies(grouped_events)
                duplicates += len(grouped_events) - len(events)
                if not events:
                    continue
                held.extend(ids)
                batch = self._storable(series, start, events, refused)
                if batch is None:
                    continue
                acc = pane.get(series)
                if acc is None:
                    pane[series] = Accumulator.of_batch(batch, series.spec.sketched)
                else:
                    acc.add_batch(batch)
                if series.step is not None:
                    self._series.note_step(series, events)
                batches.append(batch)
        if late:
            self._hold(self._oldest_open_pane(), offset).extend([event.event_id for event, _ in late])
        newest_s = None
        if newest:
            newest_s = epoch(newest)
            self._watermark.observe(partition, newest_s, now)
        self.late_events += len(late)
        return Folded(batches, late, refused, duplicates, newest_s)

    def _storable(
        self, series: Series, start: int, events: list[Event], refused: list[tuple[Event, str]]
    ) -> Batch | None:
        """The batch of `events` without those whose value no window column could hold (added
        to `refused`, and forgotten as seen): None when none is left. Float measurements are
        judged from the batch's bounds; exact decimals (amounts) one by one (a rarer type)."""
        spec = series.spec
        try:
            batch = Batch.of(series, start, events)
        except ArithmeticError:  # an infinite value, or an exponent no sum can take
            batch = None
        if spec.value is None:
            return batch
        if (
            batch is not None
            and not spec.exact
            and cast(float, batch.low) >= -MAX_VALUE
            and cast(float, batch.high) <= MAX_VALUE
        ):
            return batch
        value_of = attrgetter(spec.value)
        kept: list[Event] = []
        for event in events:
            value = value_of(event)
            if spec.exact:
                problem = amount_problem(value)
            elif -MAX_VALUE <= value <= MAX_VALUE:
                problem = None
            else:
                problem = f"{spec.value} {value!r} is beyond ±1e15"
            if problem is None:
                kept.append(event)
            else:
                refused.append((event, problem))
        if len(kept) == len(events) and batch is not None:
            return batch
        kept_ids = {id(event) for event in kept}
        self._seen.difference_update([event.event_id for event in events if id(event) not in kept_ids])
        return Batch.of(series, start, kept) if kept else None

    def _first_copies(self, events: list[Event]) -> tuple[list[Event], list[str]]:
        """The events of a group whose ids are not held yet (and their ids), now held."""
        seen = self._seen
        kept: list[Event] = []
        ids: list[str] = []
        for event in events:
            if event.event_id not in seen:
                seen.add(event.event_id)
                kept.append(event)
                ids.append(event.event_id)
        return kept, ids

    def _oldest_open_pane(self) -> int:
        size = self._pane
        return int(self._closed_before() // size) * size

    def _hold(self, start: int, offset: int) -> list[str]:
        """The list of held ids of pane `start`, noting that record `offset` added to it."""
        held = self._held.get(start)
        if held is None:
            held = self._held[start] = []
            self._held_from[start] = offset
        elif offset < self._held_from[start]:
            self._held_from[start] = offset
        return held

    def remember(self, envelope: EnvelopeView, offset: int) -> None:
        """Hold the ids of a record folded before the checkpoint this worker resumed from (the
        records from `held_from` on, read again after a restart), without folding it again."""
        oldest = self._oldest_open_pane()
        size = self._pane
        for event in envelope.events:
            try:
                start = max(int(epoch(event.timestamp) // size) * size, oldest)
            except (ValueError, OverflowError):
                continue
            if event.event_id and event.event_id not in self._seen:
                self._seen.add(event.event_id)
                self._hold(start, offset).append(event.event_id)

    def take_overflow(self) -> tuple[dict[str, int], list[tuple[Event, str]]]:
        """The events counted under `__overflow__` since the last call, by type, and the names
        that went over their cap meanwhile (SeriesResolver.take_overflow)."""
        return self._series.take_overflow()

    @property
    def step_index(self) -> dict[tuple[str, str], int]:
        """(project, "funnel:step") -> the step's position in its funnel, as events report it."""
        return self._series.step_index

    @property
    def held_from(self) -> int | None:
        """The lowest offset of a record whose event ids are held (None: none is)."""
        return min(self._held_from.values(), default=None)

    def _forget_held(self, closed_before: float) -> None:
        """Forget the ids of panes closed DEDUP_HOLD_S ago."""
        size = self._pane
        for start in [start for start in self._held if start + size + DEDUP_HOLD_S <= closed_before]:
            self._seen.difference_update(self._held.pop(start))
            del self._held_from[start]

    def due(self, now: float) -> bool:
        """Whether the watermark at wall time `now` has closed a pane `close_ready` would emit."""
        self._watermark.advance(now)
        closing = self._closing[PANE]
        return bool(closing) and closing[0] + self._pane <= self._closed_before()

    def _pop_closed(self, granularity: Granularity, closed_before: float) -> Closed:
        size = GRANULARITY_SECONDS[granularity]
        heap, windows = self._closing[granularity], self._open[granularity]
        out: Closed = []
        while heap and heap[0] + size <= closed_before:
            start = heapq.heappop(heap)
            out.extend((series, start, acc) for series, acc in windows.pop(start).items())
        return out

    def _merge_into(self, granularity: Granularity, closed: Closed) -> None:
        """Merge closed windows into the windows of granularity `granularity` that hold them.
        Their records are built by now, so an accumulator without a counterpart there moves up
        as it is, uncopied."""
        size = GRANULARITY_SECONDS[granularity]
        windows, heap = self._open[granularity], self._closing[granularity]
        for series, start, acc in closed:
            larger = start // size * size
            found = windows.get(larger)
            if found is None:
                found = windows[larger] = {}
                heapq.heappush(heap, larger)
            merged = found.get(series)
            if merged is None:
                found[series] = acc
            else:
                merged.merge(acc)

    def close_ready(self, now: float, chunk: int = 10_000) -> Iterator[ClosedWindows]:
        """Advance the watermark to wall time `now` and yield every window it closed, in lists of
        at most `chunk` records (so that a tick closing 100,000 series never holds them all as
        records at once). Consume it to the end."""
        self._watermark.advance(now)
        closed_before = self._closed_before()
        emitted_at = iso(now)
        if len(self._pane_starts) > 10_000:  # one entry per pane seen: drop them now and then
            self._pane_starts.clear()
        self._forget_held(closed_before)
        for granularity in (PANE, *ROLLUPS):
            closed = self._pop_closed(granularity, closed_before)
            steps = self._funnel_steps(closed)
            for first in range(0, len(closed), chunk):
                part = closed[first : first + chunk]
                records = self._records(granularity, part, emitted_at, steps)
                if granularity in _INTO:
                    self._merge_into(_INTO[granularity], part)
                yield ClosedWindows(granularity, records)
        if len(self._series) > self._series_kept:
            live = {series for opened in self._open.values() for found in opened.values() for series in found}
            self._series.keep_only(live)
            self._series_kept = max(2 * len(live), _MIN_SERIES_KEPT)

    def _funnel_steps(self, closed: Closed) -> dict[tuple[str, str, int], dict[int, int]]:
        """(project, funnel, window start) -> step index -> count, for step-to-step ratios."""
        steps: dict[tuple[str, str, int], dict[int, int]] = defaultdict(dict)
        for series, start, acc in closed:
            if series.kind == "conversion":
                project, _, name, _, _ = series.key
                index = self._series.step_index.get((project, name))
                if index is not None:
                    steps[(project, name.split(":", 1)[0], start)][index] = acc.count
        return steps

    def _records(
        self,
        granularity: Granularity,
        closed: Closed,
        emitted_at: str,
        steps: dict[tuple[str, str, int], dict[int, int]],
    ) -> list[tuple[bytes, bytes]]:
        """The records of closed windows: each value joins the series' encoded head, the
        window's bounds (encoded once per start) and its own numbers."""
        size = GRANULARITY_SECONDS[granularity]
        records = []
        bounds: dict[int, tuple[str, bytes]] = {}  # start -> (its key suffix, its encoded fields)
        for series, start, acc in closed:
            window = bounds.get(start)
            if window is None:
                window_start = iso(start)
                fields = {
                    "granularity": granularity,
                    "window_start": window_start,
                    "window_end": iso(start + size),
                    "emitted_at": emitted_at,
                }
                window = bounds[start] = (f"|{granularity}|{window_start}", b"," + orjson.dumps(fields)[1:-1])
            numbers: dict[str, Any] = {
                "count": acc.count,
                "sum": decimal_text(acc.nanos),
                "min": str(acc.low),
                "max": str(acc.high),
                "mean": acc.mean,
            }
            if acc.sketched:
                sketch = acc.sketch_of()
                numbers.update(zip(_LABELS, sketch.quantiles(_QS), strict=True))
                numbers["sketch"] = sketch.to_wire()
            if series.kind == "conversion":
                project, _, name, _, _ = series.key
                index = self._series.step_index.get((project, name))
                if index is not None:
                    numbers["step_index"] = index
                    previous = steps.get((project, name.split(":", 1)[0], start), {}).get(index - 1)
                    if previous:
                        numbers["ratio_to_previous"] = acc.count / previous
            parts = (series.head, window[1], b",", orjson.dumps(numbers, option=orjson.OPT_NON_STR_KEYS)[1:])
            records.append(((series.id + window[0]).encode(), b"".join(parts)))
        return records

    def to_state(self) -> dict[str, Any]:
        """Everything needed to resume exactly: open windows, watermark, series bookkeeping.

        The accumulators in it are the live ones, not copies (an object per window is what made
        checkpoints slow): encode it (streams.checkpoint.encode) before the windows change.
        """
        return {
            "open": {
                granularity: {
                    str(start): {series.id: acc for series, acc in found.items()}
                    for start, found in windows.items()
                }
                for granularity, windows in self._open.items()
            },
            "series_keys": {
                series.id: series.key
                for windows in self._open.values()
                for found in windows.values()
                for series in found
            },
            "watermark": self._watermark.to_state(),
            "series": self._series.to_state(),
            "late_events": self.late_events,
            "held_from": self.held_from,
        }

    def restore(self, state: dict[str, Any], now: float) -> None:
        """Resume from `to_state()` (called before any event of the restored partition). Reads
        the checkpoints of release 0.1 too (`windows`: one row per window)."""
        if "windows" in state:
            for granularity, rows in state["windows"].items():
                windows: dict[int, dict[Series, Accumulator]] = {}
                for project, kind, name, currency, dims, start, acc in rows:
                    key: SeriesKey = (project, kind, name, currency, tuple((k, v) for k, v in dims))
                    windows.setdefault(start, {})[self._series.series(key)] = Accumulator.from_state(acc)
                self._open[granularity] = windows
                self._closing[granularity] = sorted(windows)
        else:
            series = {
                id_: self._series.series((p, k, n, c, tuple((d, v) for d, v in dims)))
                for id_, (p, k, n, c, dims) in state["series_keys"].items()
            }
            for granularity, starts in state["open"].items():
                self._open[granularity] = {
                    int(start): {series[id_]: Accumulator.from_json(acc) for id_, acc in found.items()}
                    for start, found in starts.items()
                }
                self._closing[granularity] = sorted(self._open[granularity])
        self._watermark.restore(state["watermark"], now)
        self._series.restore(state["series"])
        self.late_events = state["late_events"]
