"""The second stage of the alert rules whose groups span events partitions, when envelopes are
keyed by series (docs/reference.md, "Spreading a project over partitions").

Every events partition folds such a rule's events into panes as it folds any rule's, but does not
evaluate it (streams/alerts.py, `spanning`). On each tick the worker that owns the partition sends
the panes it changed, whole, with the partition's event-time clock and the offset it has folded
up to, to `metrics.internal.panes` (one partition, so one stage sees every partition's part); and
right after a record that makes a group of a rule that only rises hold on the partition's own
panes (streams/folding.py, `AlertEngine.urgent`), once per group and pane. The
worker that owns that partition merges them here: it keeps each events partition's latest part
of every pane, merges the parts into one pane per group and evaluates the rule on the merged
panes with an alert engine of its own, publishing the changes as the partitions' engines do
(header `cosnap-events-partition` = MERGED_PARTITION).

- The merged clock is the oldest of the partitions' clocks: every partition has folded its events
  up to it. It starts once every events partition has sent a part, or `idle_s` after the first
  one (a partition without events sends none). The clock of a partition that said its own
  follows the wall clock (no records for `idle_s`), or that has been silent for `idle_s`, follows
  the wall clock from its last part on, so a stopped worker holds the rules back for `idle_s`
  at most.
- Each time the merged clock passes the end of a pane, every group is evaluated as of the end of
  that pane, on every partition's part of it: the pane an alert fires or resolves in does not
  depend on which worker folded what, nor on when their parts arrived. Between those, a group is
  evaluated as soon as a part of it arrives, where a part cannot mislead: a rule whose value
  only rises with events (a count, rate, sum or max above a threshold) may fire within its pane
  (as a partition's own rules do), since what holds on part of a pane holds on all of it. Any
  other rule (ratios, averages, percentiles, floors, baselines) fires and resolves when a pane
  closes, and every rule resolves then.
- A part carries its partition's offset: a part older than one already taken (a worker resuming
  from a checkpoint and folding records again) is dropped, and a part sent again replaces itself
  with the same panes, so nothing counts twice.
- The stage keeps no checkpoint: a new owner of the panes topic reads it again from its start
  (retention: a day) before going on, and the alert records it published, so that it repeats
  no change.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol, TypeVar

import orjson

from plumbing.backoff import Backoff
from schemas.rules import PANE_S
from streams.alerts import AlertEngine, GroupKey
from streams.checkpointing import read_until_answered
from streams.publishing import AlertPublisher
from streams.windows import Accumulator

log = logging.getLogger("cosnap.streams")

MERGED_PARTITION = -2  # the events partition the alert records of the merged rules name
PANE_END_S = 0.001  # a pane is evaluated as of this long before its end (alert records keep ms)
MAX_PANES_CLOSED = 60  # pane ends evaluated one by one when the clock jumps; past them, the newest only

Pane = list[Accumulator | None]


@dataclass(slots=True)
class _Source:
    """What the stage knows of one events partition: the offset and clock of its newest part,
    and the wall time that part arrived at."""

    offset: int
    clock: float
    heard_at: float
    idle: bool  # its clock follows the wall clock (no records for `idle_s`)


class PaneMerger:
    """Merges the parts of the spanning rules' panes sent by every events partition, and
    evaluates those rules on the merged panes. Plain Python: the worker's panes agent and timer
    call `add` and `tick` (streams/app.py); unit tests call them without Kafka."""

    def __init__(self, engine: AlertEngine, partitions: int, idle_s: float) -> None:
        """`engine` holds the spanning rules only, and none of their events: its panes are the
        merged ones this stage puts in. `partitions`: how many events partitions send parts."""
        self._engine = engine
        self._partitions = partitions
        self._idle = idle_s
        self._started: float | None = None  # wall time of the first part
        self._sources: dict[int, _Source] = {}
        self._panes: dict[tuple[GroupKey, int], dict[int, tuple[Pane, list[str]]]] = {}
        self._hours: dict[tuple[GroupKey, int], dict[int, Decimal]] = {}
        self._minutes: dict[tuple[str, int], dict[int, tuple[dict[str, Decimal], dict[str, int]]]] = {}
        self._clock = -math.inf  # the merged clock the groups were last evaluated at
        # Groups parts touched, with the newest pane touched: evaluated early again as the clock
        # moves, until it is in that pane (a part may come before the clock reaches its panes).
        self._touched: dict[GroupKey, int] = {}

    @property
    def engine(self) -> AlertEngine:
        """The engine of the merged panes (its `apply_published` takes the changes already out)."""
        return self._engine

    def clock(self, now: float) -> float:
        """The merged clock at wall time `now`: the oldest partition clock. Until every partition
        has sent a part, none for `idle_s` (a partition that never has events never sends one)."""
        waiting = self._started is None or now - self._started < self._idle
        if len(self._sources) < self._partitions and waiting:
            return -math.inf
        clocks = [
            source.clock + (now - source.heard_at)
            if source.idle or now - source.heard_at >= self._idle
            else source.clock
            for source in self._sources.values()
        ]
        return min(clocks, default=-math.inf)

    def add(self, part: dict[str, Any], now: float) -> list[dict[str, Any]]:
        """Take one partition's part (`AlertEngine.take_partials` with its `source` partition and
        `offset`) arrived at wall time `now`; return the alert records of the changes."""
        source, offset, clock = part["source"], part["offset"], part["clock"]
        if self._started is None:
            self._started = now
        known = self._sources.get(source)
        if known is not None and offset < known.offset:
            return []  # folded again after a restart: the newer part is already in
        if clock is None:
            return []  # the partition has seen no event yet
        idle = bool(part.get("idle"))
        if known is None:
            self._sources[source] = _Source(offset, clock, now, idle)
        else:
            known.offset, known.clock, known.heard_at, known.idle = offset, max(known.clock, clock), now, idle
        touched = False
        for rule, project, values, sent in part["groups"]:
            key: GroupKey = (rule, project, tuple(values))
            if not self._engine.knows(rule):
                continue  # not a spanning rule of this worker's rules file
            touched = True
            for start_text, pane in sent["panes"].items():
                start = int(start_text)
                self._touched[key] = max(self._touched.get(key, start), start)
                parts = self._panes.setdefault((key, start), {})
                accumulators = [None if state is None else Accumulator.from_state(state) for state in pane]
                parts[source] = (accumulators, sent["users"].get(start_text, []))
                self._engine.put_pane(key, sent["first_seen"], start, *_merged(parts.values()))
            for hour_text, total in sent["hours"].items():
                hours = self._hours.setdefault((key, int(hour_text)), {})
                hours[source] = Decimal(total)
                self._engine.put_hour(key, int(hour_text), sum(hours.values(), Decimal(0)))
        for project, minute, revenue, steps in part["minutes"]:
            by_source = self._minutes.setdefault((project, minute), {})
            by_source[source] = ({c: Decimal(a) for c, a in revenue.items()}, steps)
            self._engine.put_minute(project, minute, *_summed(by_source.values()))
        return self._advance(now, touched)

    def tick(self, now: float) -> list[dict[str, Any]]:
        """Evaluate the groups as the merged clock moves with the wall clock (partitions gone
        quiet), then forget what no rule can see any more."""
        changes = self._advance(now, False)
        if self._clock != -math.inf:
            self._engine.forget(self._clock)
            oldest = self._clock - self._engine.horizon - 2 * PANE_S
            _drop_before(self._panes, oldest)
            _drop_before(self._hours, oldest)
            _drop_before(self._minutes, oldest)
        return changes

    def _advance(self, now: float, touched: bool) -> list[dict[str, Any]]:
        """Move the merged clock to `now`'s: evaluate every group at each pane end it passed, then
        early the groups touched since (`touched`: a part touched some just now)."""
        clock = self.clock(now)
        changes: list[dict[str, Any]] = []
        moved = clock > self._clock
        if moved:
            if self._clock != -math.inf:
                # Each pane the clock passed the end of is whole: every group is evaluated as of
                # its end, whatever the order its parts came in.
                ends = range(
                    int(self._clock // PANE_S + 1) * PANE_S, int(clock // PANE_S) * PANE_S + 1, PANE_S
                )
                for end in ends[-MAX_PANES_CLOSED:]:
                    changes += self._engine.evaluate(end - PANE_END_S, now)
            self._clock = clock
        if (touched or moved) and self._touched and self._clock != -math.inf:
            changes += self._engine.evaluate_early(self._clock, now, sorted(self._touched))
            current = self._clock // PANE_S * PANE_S
            for key in [key for key, newest in self._touched.items() if newest <= current]:
                del self._touched[key]
        return changes


class PanesSource(Protocol):
    """What a new owner of the panes topic reads again (streams/checkpoint.py, KafkaCheckpoints).
    Each call blocks, and raises SourceUnavailable when Kafka does not answer."""

    def panes(self, end: int) -> list[tuple[int, bytes]]:
        """(offset, value) of the panes records below offset `end`."""
        ...

    def published_alerts(self, partitions: set[int], since: float | None) -> dict[int, list[dict[str, Any]]]:
        """The alert records published for `partitions` since wall time `since` (None: ever)."""
        ...


class MergingStage:
    """The merging stage on the worker that owns the panes topic's partition: its agent calls
    `take` for each panes record, its timer `tick`, and `forget` when the partition is revoked.
    The first record after an assignment builds the merger again from the topic's earlier
    records and the alert records it published (streams/checkpoint.py), so that a new owner
    goes on where the previous one stopped, repeating no alert change."""

    def __init__(
        self,
        fresh: Callable[[], PaneMerger],
        source: PanesSource,
        alerts: AlertPublisher,
        clock: Callable[[], float] = time.time,
        backoff: Backoff | None = None,
    ) -> None:
        self._fresh = fresh
        self._source = source
        self._alerts = alerts
        self._clock = clock
        self._backoff = backoff or Backoff(initial=0.5, cap=5.0)
        self._merger: PaneMerger | None = None
        self._next_offset = 0  # the first panes record the merger has not taken
        self._lock = asyncio.Lock()  # held from a merger's change to its publication

    async def take(self, offset: int, value: bytes) -> None:
        """Merge the panes record at `offset` and publish the alert changes it causes."""
        async with self._lock:
            if self._merger is None:
                self._merger = await self._rebuild(offset)
            if offset < self._next_offset:
                return  # taken while the merger was built again
            self._next_offset = offset + 1
            changes = self._merger.add(orjson.loads(value), self._clock())
            if changes:
                await self._alerts.publish(MERGED_PARTITION, changes)

    async def tick(self) -> None:
        """Evaluate the merged rules as the clock moves on without records (on the timer)."""
        async with self._lock:
            if self._merger is None:
                return
            changes = self._merger.tick(self._clock())
            if changes:
                await self._alerts.publish(MERGED_PARTITION, changes)

    def forget(self) -> None:
        """The panes partition was revoked: its next owner builds the merger again."""
        self._merger = None
        self._next_offset = 0

    async def _rebuild(self, end: int) -> PaneMerger:
        merger = self._fresh()
        published = await read_until_answered(
            lambda: self._source.published_alerts({MERGED_PARTITION}, None), self._backoff, "merged alerts"
        )
        for record in published.get(MERGED_PARTITION, []):
            merger.engine.apply_published(record)
        earlier = await read_until_answered(lambda: self._source.panes(end), self._backoff, "panes")
        changes: list[dict[str, Any]] = []
        for _, value in earlier:
            changes += merger.add(orjson.loads(value), self._clock())
        if changes:
            await self._alerts.publish(MERGED_PARTITION, changes)
        log.info("merges the panes of rules spanning partitions, from %d earlier records", len(earlier))
        self._next_offset = end
        return merger


K = TypeVar("K", GroupKey, str)


def _drop_before(parts: dict[tuple[K, int], Any], oldest: float) -> None:
    """Drop the parts of panes, hours or minutes that began an hour before `oldest` or earlier."""
    for old in [key for key in parts if key[1] + 3600 < oldest]:
        del parts[old]


def _merged(parts: Any) -> tuple[Pane, set[str]]:
    """One pane of a group from every partition's part of it, and the union of their users."""
    merged: Pane = [None, None]
    users: set[str] = set()
    for pane, ids in parts:
        for index, acc in enumerate(pane):
            if acc is None:
                continue
            held = merged[index]
            if held is None:
                merged[index] = acc.copy()
            else:
                held.merge(acc)
        users.update(ids)
    return merged, users


def _summed(parts: Any) -> tuple[dict[str, Decimal], dict[str, int]]:
    """A minute's revenue per currency and funnel step counts, summed over the partitions."""
    revenue: dict[str, Decimal] = {}
    steps: dict[str, int] = {}
    for amounts, counts in parts:
        for currency, amount in amounts.items():
            revenue[currency] = revenue.get(currency, Decimal(0)) + amount
        for step, count in counts.items():
            steps[step] = steps.get(step, 0) + count
    return revenue, steps
