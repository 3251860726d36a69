"""Alert rules evaluated on 10-second panes as events arrive (docs/reference.md, "Alerts").

Per events partition the worker keeps, for every (rule, project, group), the panes of the rule's
window: the matching events' count, exact sum, min, max (and a sketch for percentile rules), and
for ratio rules the same of the denominator. A record's events update their panes, and every
group they touched is evaluated at once ("early": a burst fires within the record that crosses
the threshold, not when a window closes); a timer evaluates every group so that windows slide on
and alerts resolve, pend and report no data while events are quiet.

The rules see exactly the events the windows hold: they take the record's batches (one per
series and pane, streams/windows.py), so an event too late for its pane is in no rule either.
Which rules a series' events match, and in which group, is decided once per series where the
series fixes it (its name, built-in dimensions and tag dimensions); only filters on anything
else (`source`, a tag that is not a dimension, an overflowed one, value bounds) are checked per
event.

Time is event time: the partition's clock is the newest event time seen, and it follows the wall
clock once the partition has been idle for `idle_s` (as the watermark does). Replaying records
after a restart thus re-evaluates exactly what was evaluated before, and every group remembers the
clock of its last state change: an evaluation at or before it is a replay and changes nothing.
Together with the alert records read back from `metrics.alerts.v1` (streams/checkpoint.py) this
gives one `firing` and one `resolved` record per episode across restarts.

Plain Python driven by the worker's `Folder` and `Emission` (streams/folding.py, streams/emission.py)
and by unit tests without Kafka.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, cast

from schemas.records import alert_fingerprint as fingerprint
from schemas.rules import (
    MATCH_FIELDS,
    PANE_S,
    BusinessImpact,
    Impact,
    Match,
    Rule,
    RuleFile,
    format_duration,
    routing_labels,
)
from schemas.series import OVERFLOW
from streams.envelope import EVENT_TYPES, Event
from streams.series import Series
from streams.windows import Accumulator, Batch, Folded, epoch, iso

_QUANTILES = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99}
MAX_GROUPS = 200  # per rule and project; further group values share the overflow group
_REVENUE_BUCKET_S = 60
_RISING = frozenset(["count", "rate", "sum", "max"])  # aggregates more events never lower
MAX_USERS_PER_PANE = 1000  # distinct user ids kept per group and pane for `users_affected`

GroupKey = tuple[str, str, tuple[str, ...]]  # rule, project, group_by values


Filter = tuple[tuple[str, frozenset[str]], ...]  # (field or tag, allowed values)
Bounds = tuple[float | None, float | None, float | None, float | None]  # gt, gte, lt, lte


@dataclass(frozen=True, slots=True)
class _Matcher:
    """A compiled `Match`: field and tag filters as frozensets, the value bounds as floats."""

    fields: Filter
    tags: Filter
    bounds: Bounds | None

    @classmethod
    def of(cls, match: Match) -> _Matcher:
        bounds = match.value
        return cls(
            tuple(
                (name, frozenset([wanted] if isinstance(wanted, str) else wanted))
                for name in MATCH_FIELDS
                if (wanted := getattr(match, name)) is not None
            ),
            tuple(
                (key, frozenset([wanted] if isinstance(wanted, str) else wanted))
                for key, wanted in match.tags.items()
            ),
            None if bounds is None else (bounds.gt, bounds.gte, bounds.lt, bounds.lte),
        )

    def decide(self, fields: dict[str, str | None], tags: dict[str, str | None]) -> bool | _Matcher:
        """Whether every event of a series matches, given what the series fixes (its `fields`
        and dimension `tags`); when its events may differ, the filters left to check per event
        (on other fields and tags, and the value bounds)."""
        open_fields, open_tags = [], []
        for name, allowed in self.fields:
            if name not in fields:
                open_fields.append((name, allowed))
            elif fields[name] not in allowed:
                return False
        for key, allowed in self.tags:
            if key not in tags:
                open_tags.append((key, allowed))
            elif tags[key] not in allowed:
                return False
        if not open_fields and not open_tags and self.bounds is None:
            return True
        return _Matcher(tuple(open_fields), tuple(open_tags), self.bounds)

    def matches(self, event: Event, point: float) -> bool:
        """Whether one event matches (for a series `decide` left open)."""
        for name, allowed in self.fields:
            if getattr(event, name, None) not in allowed:
                return False
        if self.tags:
            tags = event.tags
            for key, allowed in self.tags:
                if tags.get(key) not in allowed:
                    return False
        return self.bounds is None or _within(self.bounds, point)

    def of_batch(self, batch: Batch) -> bool | _Matcher:
        """For a matcher left with value bounds only: whether all or none of a batch's events
        pass, from its min and max where they tell (latencies mostly lie far from a bound);
        else itself, to check each event."""
        if self.fields or self.tags or self.bounds is None:
            return self
        low, high = float(batch.low), float(batch.high)
        if _within(self.bounds, low) and _within(self.bounds, high):
            return True
        gt, gte, lt, lte = self.bounds
        if (
            (gt is not None and high <= gt)
            or (gte is not None and high < gte)
            or (lt is not None and low >= lt)
            or (lte is not None and low > lte)
        ):
            return False
        return self


def _within(bounds: Bounds, point: float) -> bool:
    gt, gte, lt, lte = bounds
    return not (
        (gt is not None and not point > gt)
        or (gte is not None and not point >= gte)
        or (lt is not None and not point < lt)
        or (lte is not None and not point <= lte)
    )


def _rises(rule: Rule) -> bool:
    """Whether the rule's condition, once it holds on part of a pane's events, holds on all of
    them: a count, rate, sum or max above a threshold, without baseline."""
    return rule.aggregate in _RISING and rule.op in (">", ">=") and rule.baseline is None


@dataclass(frozen=True, slots=True)
class _Compiled:
    rule: Rule
    numerator: _Matcher
    denominator: _Matcher | None
    sketch: bool  # percentile rules keep a sketch per pane
    horizon: int  # rule.horizon, read for every event
    users: int  # whose user ids a rule with impact keeps: 0 the numerator's, 1 the denominator's; -1 none

    def group_of(self, event: Event) -> tuple[str, ...]:
        tags = event.tags
        return tuple(
            str(getattr(event, key, None) or "") if key in MATCH_FIELDS else tags.get(key, "")
            for key in self.rule.group_by
        )

    def plan(self, series: Series) -> _Plan | None:
        """How the rule takes the events of `series` (None: it takes none of them)."""
        fields, tags = _fixed_by(series)
        numerator = self.numerator.decide(fields, tags)
        denominator: bool | _Matcher = False
        if self.denominator is not None:
            denominator = self.denominator.decide(fields, tags)
        if numerator is False and denominator is False:
            return None
        group: list[str] = []
        for key in self.rule.group_by:
            fixed = fields if key in MATCH_FIELDS else tags
            if key not in fixed:
                return _Plan(self, numerator, denominator, None)
            group.append(fixed[key] or "")
        return _Plan(self, numerator, denominator, tuple(group))


@dataclass(frozen=True, slots=True)
class _Plan:
    """How a rule takes the events of one series: whether all of them match its numerator and
    its denominator, and their group, each decided once for the series; where its events may
    differ, what is left to check per event (a matcher; None: the group)."""

    compiled: _Compiled
    numerator: bool | _Matcher
    denominator: bool | _Matcher
    group: tuple[str, ...] | None


def _fixed_by(series: Series) -> tuple[dict[str, str | None], dict[str, str | None]]:
    """The match fields and tags equal for every event of a series: its name and built-in
    dimensions, the fields its type lacks (None), and its tag dimensions unless overflowed."""
    project, kind, name, currency, dims = series.key
    spec = series.spec
    values = dict(dims)
    fields: dict[str, str | None] = dict.fromkeys(set(MATCH_FIELDS) - _FIELDS_OF[kind])
    fields.update(zip(spec.name, name.split(":", len(spec.name) - 1), strict=True))
    if spec.dimension is not None:
        fields[spec.dimension] = values.get(spec.dimension)
    if spec.currency is not None:
        fields[spec.currency] = currency
    tags = {tag: values.get(tag) for tag in series.dimensions if values.get(tag) != OVERFLOW}
    return fields, tags


_FIELDS_OF = {event_type.kind: set(event_type.__struct_fields__) for event_type in EVENT_TYPES}


@dataclass(slots=True)
class _Totals:
    """What a rule reads of a group's panes in a range: the numerator's count, exact sum, min
    and max, and the denominator's count."""

    count: int = 0
    nanos: int | Decimal = 0
    low: float | Decimal | int | None = None
    high: float | Decimal | int | None = None
    samples: int = 0

    def add(self, pane: list[Accumulator | None]) -> None:
        numerator, denominator = pane
        if numerator is not None:
            self.count += numerator.count
            self.nanos += numerator.nanos
            if self.low is None or numerator.low < self.low:
                self.low = numerator.low
            if self.high is None or numerator.high > self.high:
                self.high = numerator.high
        if denominator is not None:
            self.samples += denominator.count

    def plus(self, pane: list[Accumulator | None]) -> _Totals:
        """These totals and a pane's, as new totals."""
        totals = _Totals(self.count, self.nanos, self.low, self.high, self.samples)
        totals.add(pane)
        return totals

    def remove(self, pane: list[Accumulator | None]) -> None:
        """Take a pane out of the counts and sums (min and max cannot be taken out: see
        `_Settled.slide`)."""
        numerator, denominator = pane
        if numerator is not None:
            self.count -= numerator.count
            self.nanos -= numerator.nanos
        if denominator is not None:
            self.samples -= denominator.count


@dataclass(slots=True)
class _Settled:
    """The totals of a group's panes in [first, last): the window's panes but its newest. Every
    record that touches the group evaluates it, mostly adding to its newest pane only, so these
    are kept, and slid along as the window moves, rather than summed over every pane (360 of
    them for an hour) at every record."""

    first: int
    last: int
    totals: _Totals

    @classmethod
    def of(cls, panes: dict[int, list[Accumulator | None]], first: int, last: int) -> _Settled:
        totals = _Totals()
        for start, pane in panes.items():
            if first <= start < last:
                totals.add(pane)
        return cls(first, last, totals)

    def slide(self, panes: dict[int, list[Accumulator | None]], first: int, last: int, bounds: bool) -> bool:
        """Move to [first, last) by adding the panes that entered and removing those that left;
        False (and unchanged) when that is no cheaper than summing again: the window moved back
        or far, or a pane left a window whose min or max (`bounds`) is read."""
        entered = range(self.last, last, PANE_S)
        left = range(self.first, min(first, self.last), PANE_S)
        if first < self.first or last < self.last or len(entered) + len(left) > len(panes):
            return False
        gone = [pane for start in left if (pane := panes.get(start)) is not None]
        if gone and bounds:
            return False
        for pane in gone:
            self.totals.remove(pane)
        for start in entered:
            if first <= start and (pane := panes.get(start)) is not None:
                self.totals.add(pane)
        self.first, self.last = first, last
        return True


@dataclass(slots=True)
class AlertGroup:
    """One alert's panes and state. `panes`: pane start -> [numerator, denominator]."""

    first_seen: float
    panes: dict[int, list[Accumulator | None]] = field(default_factory=dict)
    settled: _Settled | None = None  # forgotten when a pane in its range changes
    hours: dict[int, Decimal] = field(default_factory=dict)  # baseline rules: hour start -> total
    users: dict[int, set[str]] = field(default_factory=dict)  # rules with impact: pane start -> user ids
    status: str = "inactive"  # inactive | pending | firing
    since: float = 0.0  # pending: when the condition began to hold; firing: when it fired
    clear_since: float | None = None  # firing with keep_firing_for: when the value became clear
    changed_at: float = -math.inf  # event-time clock of the last state change
    page: bool = False  # the episode pages (label page="true"): decided when it fires, kept to resolve


class AlertEngine:
    def __init__(self, rules: RuleFile, idle_s: float, spanning: frozenset[str] = frozenset()) -> None:
        """`spanning`: the rules whose groups span events partitions (envelopes keyed by series,
        docs/reference.md, "Spreading a project over partitions"). This engine folds their panes
        but does not evaluate them: `take_partials` hands the panes it changed to the stage that
        merges every partition's (streams/merging.py), which evaluates them on the whole group."""
        self._compiled = {
            rule.name: _Compiled(
                rule,
                _Matcher.of(rule.match),
                None if rule.of is None else _Matcher.of(rule.of),
                rule.aggregate in _QUANTILES,
                rule.horizon,
                _users_of(rule),
            )
            for rule in rules.rules
        }
        self._by_type: dict[str, list[_Compiled]] = {}
        for compiled in self._compiled.values():
            self._by_type.setdefault(compiled.rule.match.type, []).append(compiled)
        impacts = [r.impact for r in rules.rules if r.impact is not None]
        self._revenue_window = max((impact.revenue_window for impact in impacts), default=0)
        # project -> minute -> currency -> revenue: for the business impact of an alert.
        self._revenue: dict[str, dict[int, dict[str, Decimal]]] = {}
        # The funnel steps (series names "funnel:step") whose conversion an impact states, counted
        # per project and minute over two impact windows (the window, and the one before it).
        steps = [impact.conversion for impact in impacts if impact.conversion is not None]
        self._steps = frozenset(f"{s.funnel}:{name}" for s in steps for name in (s.step, s.of))
        self._steps_window = 2 * max((i.revenue_window for i in impacts if i.conversion), default=0)
        self._conversions: dict[str, dict[int, dict[str, int]]] = {}
        self._groups: dict[GroupKey, AlertGroup] = {}
        self._group_counts: dict[tuple[str, str], int] = {}
        self._idle = idle_s
        self._newest = -math.inf  # newest event time seen
        self._arrival = 0.0  # wall time of the last record
        self._spanning = spanning
        self._changed_panes: set[tuple[GroupKey, int]] = set()  # of spanning rules, since the last take
        self._changed_minutes: set[tuple[str, int]] = set()  # (project, minute) of revenue or steps
        self._taken = -math.inf  # the clock at the last take
        # Spanning groups whose rule rises (`_rises`) touched by the record being folded, and those
        # whose part of the current pane already made the engine `urgent`, with that pane's start.
        self._rising: set[GroupKey] = set()
        self._urgent_groups: set[GroupKey] = set()
        self._urgent_pane = -math.inf
        self._urgent = False

    # -- input ------------------------------------------------------------------------------------

    def clock(self, now: float) -> float:
        """The partition's event-time clock at wall time `now`."""
        idle = now - self._arrival
        return self._newest + idle if idle >= self._idle else self._newest

    def add(self, project: str, folded: Folded, now: float) -> list[dict[str, Any]]:
        """Take a record's events as the windows folded them (the late ones are in no window,
        and in no rule either); return the alert records of the state changes they cause."""
        touched: set[GroupKey] = set()
        for batch in folded.batches:
            series = batch.series
            if series.kind == "revenue" and self._revenue_window:
                self._add_revenue(project, series.key[3], batch.start, Decimal(batch.nanos).scaleb(-9))
            elif series.kind == "conversion" and series.key[2] in self._steps:
                self._add_conversions(project, series.key[2], batch.start, len(batch.events))
            plans = cast("tuple[_Plan, ...] | None", series.rule_plans)
            if plans is None:
                plans = self._plan(series)
            for plan in plans:
                numerator, denominator, group = plan.numerator, plan.denominator, plan.group
                if group is not None and not isinstance(numerator, bool):
                    numerator = numerator.of_batch(batch)
                if group is not None and not isinstance(denominator, bool):
                    denominator = denominator.of_batch(batch)
                if isinstance(numerator, bool) and isinstance(denominator, bool) and group is not None:
                    if numerator or denominator:
                        key = self._fold(plan.compiled, project, group, batch, numerator, denominator)
                        if key is not None:
                            touched.add(key)
                else:
                    self._fold_split(plan, project, batch, touched)
        if folded.newest is not None:
            self._newest = max(self._newest, folded.newest)
            self._arrival = now
        if self._rising:
            self._flag_urgent(now)
        if not touched:
            return []
        clock = self.clock(now)
        changes = [self._evaluate(key, clock, now) for key in sorted(touched)]
        return [change for change in changes if change is not None]

    def _plan(self, series: Series) -> tuple[_Plan, ...]:
        """The rules' plans for a series, kept on it: the series' resolver is this partition's,
        like the engine, and a series the resolver forgets takes its plans along."""
        # A tuple: most series match no rule, and they all share the empty one.
        rules = self._by_type.get(series.kind, ())
        plans = tuple(plan for compiled in rules if (plan := compiled.plan(series)))
        series.rule_plans = plans
        return plans

    def _fold_split(self, plan: _Plan, project: str, batch: Batch, touched: set[GroupKey]) -> None:
        """Fold a batch for a rule that tells its events apart: split by what each matches and
        its group, then each part at once."""
        compiled = plan.compiled
        numerator, denominator = plan.numerator, plan.denominator
        parts: dict[tuple[tuple[str, ...], bool, bool], list[Event]] = {}
        for event, point in zip(batch.events, batch.floats(), strict=True):
            by_numerator = numerator if isinstance(numerator, bool) else numerator.matches(event, point)
            by_denominator = (
                denominator if isinstance(denominator, bool) else denominator.matches(event, point)
            )
            if by_numerator or by_denominator:
                group = compiled.group_of(event) if plan.group is None else plan.group
                parts.setdefault((group, by_numerator, by_denominator), []).append(event)
        for (group, by_numerator, by_denominator), events in parts.items():
            part = Batch.of(batch.series, batch.start, events)
            key = self._fold(compiled, project, group, part, by_numerator, by_denominator)
            if key is not None:
                touched.add(key)

    def _fold(
        self,
        compiled: _Compiled,
        project: str,
        values: tuple[str, ...],
        batch: Batch,
        numerator: bool,
        denominator: bool,
    ) -> GroupKey | None:
        start = batch.start
        if start + PANE_S <= self._newest - compiled.horizon - PANE_S:
            return None  # older than anything the rule still looks at
        key = self._group_key(compiled, project, values)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = AlertGroup(first_seen=start)
        pane = group.panes.get(start)
        if pane is None:
            pane = group.panes[start] = [None, None]
        if group.settled is not None and start < group.settled.last:
            group.settled = None
        for index, by in ((0, numerator), (1, denominator)):
            if by:
                acc = pane[index]
                if acc is None:
                    pane[index] = Accumulator.of_batch(batch, compiled.sketch)
                else:
                    acc.add_batch(batch)
                if index == compiled.users:
                    _add_users(group, start, batch)
        rule = compiled.rule
        if rule.baseline is not None and numerator:
            hour = start // 3600 * 3600
            added = Decimal(batch.nanos).scaleb(-9) if rule.aggregate == "sum" else Decimal(len(batch.events))
            group.hours[hour] = group.hours.get(hour, Decimal(0)) + added
        if rule.name in self._spanning:
            self._changed_panes.add((key, start))
            if _rises(rule):
                self._rising.add(key)
            return None  # evaluated where the partitions' panes are merged
        return key

    def _group_key(self, compiled: _Compiled, project: str, values: tuple[str, ...]) -> GroupKey:
        key = (compiled.rule.name, project, values)
        if values and key not in self._groups:
            counted = (compiled.rule.name, project)
            if self._group_counts.get(counted, 0) >= MAX_GROUPS:
                return (compiled.rule.name, project, tuple(OVERFLOW for _ in values))
            self._group_counts[counted] = self._group_counts.get(counted, 0) + 1
        return key

    def _add_conversions(self, project: str, step: str, start: int, count: int) -> None:
        minute = start // _REVENUE_BUCKET_S * _REVENUE_BUCKET_S
        if self._spanning:
            self._changed_minutes.add((project, minute))
        counts = self._conversions.setdefault(project, {}).setdefault(minute, {})
        counts[step] = counts.get(step, 0) + count

    def _add_revenue(self, project: str, currency: str, start: int, amount: Decimal) -> None:
        minute = start // _REVENUE_BUCKET_S * _REVENUE_BUCKET_S
        if self._spanning:
            self._changed_minutes.add((project, minute))
        buckets = self._revenue.setdefault(project, {}).setdefault(minute, {})
        buckets[currency] = buckets.get(currency, Decimal(0)) + amount

    # -- evaluation -------------------------------------------------------------------------------

    def tick(self, now: float) -> list[dict[str, Any]]:
        """Evaluate every group at the clock of wall time `now`, then forget what no rule can see."""
        if self._newest == -math.inf:
            return []
        clock = self.clock(now)
        changes = self.evaluate(clock, now)
        self._forget_old(clock)
        return changes

    def evaluate(self, clock: float, now: float, keys: list[GroupKey] | None = None) -> list[dict[str, Any]]:
        """Evaluate the groups of `keys` (None: every group) at `clock`, but those of spanning
        rules; return the alert records of the changes."""
        spanning = self._spanning
        evaluated = sorted(self._groups) if keys is None else keys
        return [
            change
            for key in evaluated
            if key[0] not in spanning and (change := self._evaluate(key, clock, now)) is not None
        ]

    def evaluate_early(self, clock: float, now: float, keys: list[GroupKey]) -> list[dict[str, Any]]:
        """Evaluate the groups of `keys` at `clock` on panes that may still lack events, only
        where that cannot be wrong: for rules whose value only rises with more events (a count,
        rate, sum or max above a threshold, without baseline), and only when the condition
        holds (it then holds on the whole panes too). Return the alert records of the changes."""
        changes = []
        for key in keys:
            if key not in self._groups:
                continue  # forgotten since it was touched
            rule = self._compiled[key[0]].rule
            if not _rises(rule):
                continue
            value, _ = self.value(key, clock)
            if value is not None and rule.holds(value):
                change = self._evaluate(key, clock, now)
                if change is not None:
                    changes.append(change)
        return changes

    # -- spanning rules ---------------------------------------------------------------------------

    @property
    def urgent(self) -> bool:
        """Whether the part should leave now rather than on the next tick: a group of a spanning
        rule that rises holds on this partition's events alone, so it holds on the merged panes
        too, and the merging stage can fire it as soon as it has the part (once per group and
        pane; reset by `take_partials`)."""
        return self._urgent

    def _flag_urgent(self, now: float) -> None:
        """Flag the engine `urgent` if a rising spanning group the record touched holds at the
        partition's clock for the first time in its pane."""
        clock = self.clock(now)
        pane = clock // PANE_S * PANE_S
        if pane != self._urgent_pane:
            self._urgent_pane = pane
            self._urgent_groups.clear()
        for key in self._rising:
            if key in self._urgent_groups:
                continue
            value, _ = self.value(key, clock)
            if value is not None and self._compiled[key[0]].rule.holds(value):
                self._urgent_groups.add(key)
                self._urgent = True
        self._rising.clear()

    def take_partials(self, now: float) -> dict[str, Any] | None:
        """This partition's part of the spanning rules' groups: the clock, the panes (hours,
        users) changed since the last take, whole as they are now, and the revenue and funnel
        steps of the minutes changed (for impacts); None when nothing changed and the clock has
        not moved since the last take (a clock that follows the wall clock: not into another
        pane). A pane is sent whole, not as a difference: the merging stage keeps each
        partition's latest, so sending one again changes nothing."""
        self._urgent = False
        clock = self.clock(now)
        idle = clock != self._newest  # the clock follows the wall clock: the stage moves it on too
        moved = clock // PANE_S * PANE_S != self._taken // PANE_S * PANE_S if idle else clock > self._taken
        if not self._changed_panes and not self._changed_minutes and not moved:
            return None
        self._taken = clock
        groups: dict[GroupKey, dict[str, Any]] = {}
        for key, start in sorted(self._changed_panes):
            group = self._groups.get(key)
            pane = None if group is None else group.panes.get(start)
            if group is None or pane is None:
                continue  # forgotten since: older than anything the rule looks at
            sent = groups.setdefault(
                key, {"first_seen": group.first_seen, "panes": {}, "hours": {}, "users": {}}
            )
            sent["panes"][str(start)] = [None if acc is None else acc.to_state() for acc in pane]
            if start in group.users:
                sent["users"][str(start)] = sorted(group.users[start])
            hour = start // 3600 * 3600
            if hour in group.hours:
                sent["hours"][str(hour)] = str(group.hours[hour])
        minutes = [
            [
                project,
                minute,
                {c: str(a) for c, a in self._revenue.get(project, {}).get(minute, {}).items()},
                self._conversions.get(project, {}).get(minute, {}),
            ]
            for project, minute in sorted(self._changed_minutes)
        ]
        self._changed_panes.clear()
        self._changed_minutes.clear()
        return {
            "clock": None if clock == -math.inf else clock,
            "idle": idle,
            "groups": [[*key[:2], list(key[2]), sent] for key, sent in groups.items()],
            "minutes": minutes,
        }

    def knows(self, rule: str) -> bool:
        """Whether `rule` is one of the engine's rules."""
        return rule in self._compiled

    @property
    def horizon(self) -> int:
        """How far back (seconds) the engine's rules look, the farthest of them."""
        return max((compiled.horizon for compiled in self._compiled.values()), default=0)

    def put_pane(
        self, key: GroupKey, first_seen: float, start: int, pane: list[Accumulator | None], users: set[str]
    ) -> None:
        """Set a group's pane to `pane` (the merge of every partition's), with its user ids."""
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = AlertGroup(first_seen=first_seen)
        group.first_seen = min(group.first_seen, first_seen)
        group.panes[start] = pane
        if users:
            group.users[start] = users
        if group.settled is not None and start < group.settled.last:
            group.settled = None

    def put_hour(self, key: GroupKey, hour: int, total: Decimal) -> None:
        """Set a baseline rule's total of an hour (the sum of every partition's)."""
        group = self._groups.get(key)
        if group is not None:
            group.hours[hour] = total

    def put_minute(
        self, project: str, minute: int, revenue: dict[str, Decimal], steps: dict[str, int]
    ) -> None:
        """Set a project's revenue and funnel step counts of a minute (summed over partitions)."""
        if revenue:
            self._revenue.setdefault(project, {})[minute] = revenue
        if steps:
            self._conversions.setdefault(project, {})[minute] = steps

    def forget(self, clock: float) -> None:
        """Forget what no rule can see any more at `clock`."""
        self._forget_old(clock)

    def value(self, key: GroupKey, clock: float) -> tuple[float | None, int]:
        """The rule's value for the group at `clock` (None: no data) and its sample count."""
        compiled = self._compiled[key[0]]
        rule, group = compiled.rule, self._groups[key]
        # The current pane and the window's worth of panes before it: "5m" looks back between 5 m
        # and 5 m 10 s, and an event a few milliseconds older than the newest one still counts.
        end = int(clock // PANE_S) * PANE_S
        value: float | None
        if compiled.sketch:
            value, count = self._percentile(rule, group, end)
        else:
            totals = self._totals(group, end - rule.window, end, rule.aggregate in ("min", "max"))
            count = totals.count
            if rule.aggregate == "ratio":
                samples = totals.samples
                if samples == 0 or samples < rule.min_samples:
                    return None, samples
                return count / samples, samples
            if count < rule.min_samples:
                return None, count
            if rule.aggregate == "count":
                value = float(count)
            elif rule.aggregate == "rate":
                value = count / rule.window
            elif rule.aggregate == "sum":
                value = float(Decimal(totals.nanos).scaleb(-9))
            elif count == 0 or totals.low is None or totals.high is None:  # no event in the window
                return None, 0
            elif rule.aggregate == "avg":
                value = float(Decimal(totals.nanos).scaleb(-9)) / count
            elif rule.aggregate == "min":
                value = float(totals.low)
            else:
                value = float(totals.high)
        if rule.baseline is not None and value is not None:
            usual = self._baseline(rule, group, clock) if rule.baseline else None
            value = None if not usual else value / usual
        return value, count

    @staticmethod
    def _totals(group: AlertGroup, first: int, last: int, bounds: bool) -> _Totals:
        """The totals of the group's panes starting in [first, last] (`bounds`: their min and
        max are read)."""
        settled = group.settled
        if settled is None or not (
            (settled.first, settled.last) == (first, last) or settled.slide(group.panes, first, last, bounds)
        ):
            settled = group.settled = _Settled.of(group.panes, first, last)
        newest = group.panes.get(last)
        return settled.totals if newest is None else settled.totals.plus(newest)

    def _percentile(self, rule: Rule, group: AlertGroup, end: int) -> tuple[float | None, int]:
        """A percentile rule's value: the sketches of the window's panes merged into a copy."""
        first = end - rule.window
        numerator = [
            acc for start, (acc, _) in group.panes.items() if first <= start <= end and acc is not None
        ]
        count = sum(acc.count for acc in numerator)
        if count < rule.min_samples or not numerator or not numerator[0].sketched:
            return None, count
        merged = numerator[0].copy()
        for acc in numerator[1:]:
            merged.merge(acc)
        return merged.sketch_of().quantile(_QUANTILES[rule.aggregate]), count

    @staticmethod
    def _baseline(rule: Rule, group: AlertGroup, clock: float) -> float | None:
        """The average of the same window on each of the previous `days` days, from hourly totals
        (prorated by overlap); None while the group's history is shorter than that."""
        days = rule.baseline.days if rule.baseline else 0
        if group.first_seen > clock - days * 86400 - rule.window:
            return None
        totals = []
        for day in range(1, days + 1):
            end = clock - day * 86400
            begin = end - rule.window
            total = 0.0
            for hour in range(int(begin // 3600 * 3600), int(end) + 1, 3600):
                overlap = min(end, hour + 3600) - max(begin, hour)
                if overlap > 0:
                    total += float(group.hours.get(hour, 0)) * overlap / 3600
            totals.append(total)
        return sum(totals) / days

    def _evaluate(self, key: GroupKey, clock: float, now: float) -> dict[str, Any] | None:
        """Evaluate the group at `clock`; return the alert record of a published change."""
        group = self._groups[key]
        if clock <= group.changed_at:
            return None  # a replay of evaluations whose outcome is already decided
        rule = self._compiled[key[0]].rule
        value, count = self.value(key, clock)
        starts_at = group.since
        change = step(rule, group, value, clock)
        if change is None:
            return None
        if change == "firing":
            starts_at = clock
        return self._record(key, change, value, count, starts_at, clock, now)

    # -- records ----------------------------------------------------------------------------------

    def labels(self, key: GroupKey) -> dict[str, str]:
        rule = self._compiled[key[0]].rule
        return {
            "alertname": rule.name,
            "severity": rule.severity,
            "project": key[1],
            **dict(zip(rule.group_by, key[2], strict=True)),
            **rule.labels,
        }

    def _record(
        self,
        key: GroupKey,
        state: str,
        value: float | None,
        count: int,
        starts_at: float,
        clock: float,
        now: float,
    ) -> dict[str, Any]:
        rule = self._compiled[key[0]].rule
        group = self._groups[key]
        figures = None if rule.impact is None else self._impact(rule.impact, key, clock)
        if state == "firing":
            group.page = "page" in routing_labels(rule.severity, rule.delivery_channels, figures, rule.impact)
        labels = self.labels(key)
        fields = {
            **labels,
            "value": math.nan if value is None else value,
            "threshold": rule.threshold,
            "window": format_duration(rule.window),
            "count": count,
        }
        annotations = {
            "summary": render(rule.annotations.summary, fields),
            "description": render(rule.annotations.description, fields),
            "runbook_url": rule.annotations.runbook_url,
        }
        if figures is not None and rule.impact is not None:
            annotations |= figures.annotations(rule.impact)
        routed = labels | routing_labels(rule.severity, rule.delivery_channels, None, None)
        if group.page:
            routed["page"] = "true"
        return {
            "v": 1,
            "fingerprint": fingerprint(labels),
            "rule": rule.name,
            "state": state,
            "severity": rule.severity,
            "labels": routed,
            "annotations": {k: v for k, v in annotations.items() if v},
            "value": value,
            "threshold": rule.threshold,
            "starts_at": iso(starts_at),
            "ends_at": iso(clock) if state == "resolved" else None,
            "evaluated_at": iso(clock),
            "emitted_at": iso(now),
        }

    def _impact(self, impact: Impact, key: GroupKey, clock: float) -> BusinessImpact:
        """The alert's business impact at `clock`: the project's revenue over the impact window,
        the distinct users of the group's panes in the rule's window, and the conversion of the
        impact's funnel step over the impact window and the one before it."""
        project, window = key[1], impact.revenue_window
        since = clock - window
        totals: dict[str, Decimal] = {}
        for minute, amounts in self._revenue.get(project, {}).items():
            if since <= minute <= clock:
                for currency, amount in amounts.items():
                    totals[currency] = totals.get(currency, Decimal(0)) + amount
        rule, group = self._compiled[key[0]].rule, self._groups[key]
        first = int(clock // PANE_S) * PANE_S - rule.window
        users: set[str] = set()
        capped = False
        for start, ids in group.users.items():
            if start >= first:
                users |= ids
                capped = capped or len(ids) >= MAX_USERS_PER_PANE
        conversion = None
        step = impact.conversion
        if step is not None:
            counts = self._conversions.get(project, {})
            ratios: list[float | None] = []
            for begin in (since, since - window):
                reached = left = 0
                for minute, by_step in counts.items():
                    if begin <= minute < begin + window:
                        reached += by_step.get(f"{step.funnel}:{step.step}", 0)
                        left += by_step.get(f"{step.funnel}:{step.of}", 0)
                ratios.append(reached / left if left else None)
            conversion = (ratios[0], ratios[1])
        return BusinessImpact(totals, len(users) if group.users else None, capped, conversion)

    # -- bookkeeping ------------------------------------------------------------------------------

    def _forget_old(self, clock: float) -> None:
        for key in list(self._groups):
            rule, group = self._compiled[key[0]].rule, self._groups[key]
            oldest = clock - rule.window - PANE_S
            for start in [s for s in group.panes if s + PANE_S < oldest]:
                del group.panes[start]
                group.users.pop(start, None)
                group.settled = None
            if group.hours:
                horizon = clock - rule.horizon - 3600
                for hour in [h for h in group.hours if h + 3600 < horizon]:
                    del group.hours[hour]
            if not group.panes and not group.hours and group.status == "inactive":
                del self._groups[key]
                if key[2]:
                    counted = (key[0], key[1])
                    self._group_counts[counted] = max(self._group_counts.get(counted, 1) - 1, 0)
        _forget_minutes(self._revenue, clock - self._revenue_window)
        _forget_minutes(self._conversions, clock - self._steps_window)

    def apply_published(self, record: dict[str, Any]) -> None:
        """Take a record this partition published (read back after a restart) as the group's
        state, unless the restored state already knows a later change."""
        compiled = self._compiled.get(record["rule"])
        if compiled is None:  # the rule was removed from the rules file since
            return
        labels = record["labels"]
        key = (record["rule"], labels["project"], tuple(labels.get(k, "") for k in compiled.rule.group_by))
        evaluated = epoch(record["evaluated_at"])
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = AlertGroup(first_seen=evaluated)
        if evaluated < group.changed_at:
            return
        group.changed_at = evaluated
        group.clear_since = None
        if record["state"] == "firing":
            group.status, group.since = "firing", epoch(record["starts_at"])
            group.page = labels.get("page") == "true"
        else:
            group.status = "inactive"

    def to_state(self) -> dict[str, Any]:
        def acc_state(acc: Accumulator | None) -> list[Any] | None:
            return None if acc is None else acc.to_state()

        return {
            "newest": None if self._newest == -math.inf else self._newest,
            "groups": [
                [
                    *key[:2],
                    list(key[2]),
                    {str(s): [acc_state(a) for a in pane] for s, pane in g.panes.items()},
                    {str(h): str(t) for h, t in g.hours.items()},
                    [g.first_seen, g.status, g.since, g.clear_since, _finite(g.changed_at), g.page],
                    {str(s): sorted(ids) for s, ids in g.users.items()},
                ]
                for key, g in self._groups.items()
            ],
            "revenue": {
                project: {str(m): {c: str(a) for c, a in amounts.items()} for m, amounts in minutes.items()}
                for project, minutes in self._revenue.items()
            },
            "conversions": {
                project: {str(m): counts for m, counts in minutes.items()}
                for project, minutes in self._conversions.items()
            },
        }

    def restore(self, state: dict[str, Any], now: float) -> None:
        """Resume from `to_state()`; groups of rules no longer configured are dropped."""
        self._newest = -math.inf if state["newest"] is None else state["newest"]
        self._arrival = now
        for rule, project, values, panes, hours, states, *users in state["groups"]:
            # Checkpoints written before impacts counted users hold neither `page` nor users.
            first_seen, status, since, clear_since, changed, *page = states
            if rule not in self._compiled:
                continue
            key = (rule, project, tuple(values))
            self._groups[key] = AlertGroup(
                first_seen=first_seen,
                panes={
                    int(s): [None if a is None else Accumulator.from_state(a) for a in pane]
                    for s, pane in panes.items()
                },
                hours={int(h): Decimal(t) for h, t in hours.items()},
                status=status,
                since=since,
                clear_since=clear_since,
                changed_at=-math.inf if changed is None else changed,
                page=bool(page and page[0]),
                users={int(s): set(ids) for s, ids in (users[0] if users else {}).items()},
            )
            if values:
                self._group_counts[(rule, project)] = self._group_counts.get((rule, project), 0) + 1
        self._revenue = {
            project: {int(m): {c: Decimal(a) for c, a in amounts.items()} for m, amounts in minutes.items()}
            for project, minutes in state["revenue"].items()
        }
        self._conversions = {
            project: {int(m): dict(counts) for m, counts in minutes.items()}
            for project, minutes in state.get("conversions", {}).items()
        }
        if self._spanning:  # what was taken before the stop may not have reached the merging stage
            self._changed_panes = {
                (key, start)
                for key, group in self._groups.items()
                if key[0] in self._spanning
                for start in group.panes
            }
            self._changed_minutes = {
                (project, minute)
                for source in (self._revenue, self._conversions)
                for project, minutes in source.items()
                for minute in minutes
            }


def _forget_minutes(by_project: dict[str, dict[int, Any]], before: float) -> None:
    """Drop the minute buckets that ended before `before`, and the projects left without any."""
    for project in list(by_project):
        minutes = by_project[project]
        for minute in [m for m in minutes if m + _REVENUE_BUCKET_S < before]:
            del minutes[minute]
        if not minutes:
            del by_project[project]


def _users_of(rule: Rule) -> int:
    """Whose user ids a rule keeps for `users_affected`: none without an impact, nor for a baseline
    rule (a level against its history: the users of the events that did come are not the ones
    affected, and every revenue event would pay for collecting them); for a floor on a ratio (too
    few successes) the denominator's, the users who tried; else the events it counts."""
    if rule.impact is None or rule.baseline is not None:
        return -1
    return 1 if rule.aggregate == "ratio" and rule.op in ("<", "<=") else 0


def _add_users(group: AlertGroup, start: int, batch: Batch) -> None:
    """The user ids of a batch's events into the group's pane; a pane past MAX_USERS_PER_PANE
    takes no more (the count becomes a lower bound)."""
    ids = group.users.get(start)
    if ids is not None and len(ids) >= MAX_USERS_PER_PANE:
        return
    users = [event.user_id for event in batch.events if event.user_id is not None]
    if users:
        if ids is None:
            group.users[start] = set(users)
        else:
            ids.update(users)


def step(rule: Rule, group: AlertGroup, value: float | None, clock: float) -> str | None:
    """Move one alert's state machine with the rule's value at `clock` (None: no data); return
    "firing" or "resolved" when the change is one to publish. Pending is internal."""
    if value is None:
        if rule.no_data == "keep":
            return None
        holds = rule.no_data == "alerting"
        clear = not holds
    else:
        holds, clear = rule.holds(value), rule.clear(value)
    if group.status == "inactive":
        if not holds:
            return None
        group.status, group.since, group.changed_at = "pending", clock, clock
    elif group.status == "pending" and not holds:
        group.status, group.changed_at = "inactive", clock
        return None
    if group.status == "pending":
        if clock - group.since < rule.for_:
            return None
        group.status, group.since, group.changed_at, group.clear_since = "firing", clock, clock, None
        return "firing"
    if not clear:
        group.clear_since = None
        return None
    if group.clear_since is None:
        group.clear_since = clock
    if clock - group.clear_since < rule.keep_firing_for:
        return None
    group.status, group.changed_at, group.clear_since = "inactive", clock, None
    return "resolved"


def _finite(value: float) -> float | None:
    return None if math.isinf(value) else value


def render(template: str, fields: dict[str, Any]) -> str:
    """An annotation template formatted with the alert's fields; a template naming a field the
    alert lacks is shown as written (`rules check` reports it beforehand)."""
    try:
        return template.format_map(fields)
    except (KeyError, ValueError, IndexError):
        return template


def transitions(rule: Rule, values: list[float | None], interval: int) -> list[tuple[int, str]]:
    """The published state changes of `rule` given its value at every `interval` seconds: what a
    rule test (`cosnap-metrics rules test`) compares with its expectations."""
    group = AlertGroup(first_seen=0.0)
    out = []
    for n, value in enumerate(values):
        change = step(rule, group, value, n * interval)
        if change is not None:
            out.append((n * interval, change))
    return out
