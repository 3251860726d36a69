"""From an event (a wire dict of an envelope) to its series.

A series is (project, type, name, currency, dims): `name` is the revenue name, the metric, the
feature or `funnel:step`; `dims` holds the built-in dimensions (`action`, `unit`) and the tags
the series config names, each dimension capped in distinct values (see schemas/series.py).

Resolving runs for every event, so it is a lookup: the resolver remembers, per (project, type,
name and built-in dimension), which raw tag values led to which series. Only an unseen
combination goes through the dimension rules and the caps; caching those answers changes none,
since a value's fate under its cap never changes once decided.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from schemas.series import OVERFLOW, SeriesConfig
from streams.envelope import Conversion, Event, Feature, Performance, Revenue

Dims = tuple[tuple[str, str], ...]
SeriesKey = tuple[str, str, str, str, Dims]  # project, type, name, currency, dims
_MAX_VALUE_COMBINATIONS = 10_000  # per name: raw tag values remembered; a runaway tag refills it


def series_id(key: SeriesKey) -> str:
    """A stable id of a series, the same in every process and release."""
    project, kind, name, currency, dims = key
    text = "\x1f".join([project, kind, name, currency, *[f"{k}={v}" for k, v in dims]])
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


@dataclass(slots=True, eq=False)
class Series:
    """One series. The resolver makes one object per series key and windows are keyed by it,
    so lookups hash its identity, not a tuple of strings."""

    key: SeriesKey
    id: str
    dimensions: tuple[str, ...]  # the tags that are dimensions of its name (present in `key` or not)
    kind: str = field(init=False)
    step: tuple[str, str] | None = field(init=False)  # conversion: its key in `step_index`
    head: bytes = field(init=False)  # its final records' unchanging fields, as JSON (see `_head`)
    # The alert rules' plans for its events (streams/alerts.py), set by the engine of the
    # partition whose resolver made it; None until its first batch.
    rule_plans: tuple[object, ...] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.kind = self.key[1]
        self.step = (self.key[0], self.key[2]) if self.kind == "conversion" else None
        self.head = _head(self.key, self.id)


def _head(key: SeriesKey, id_: str) -> bytes:
    """`{"v":1,"project":...,"series_id":...` without the closing brace: the part of a
    WindowAggregate record that every window of the series shares, encoded once."""
    project, kind, name, currency, dims = key
    fields = {"v": 1, "project": project, "type": kind, "name": name, "currency": currency}
    return orjson.dumps(fields | {"dims": dict(dims), "series_id": id_})[:-1]


TagValues = Callable[[dict[str, str]], tuple[str | None, ...]]


def tag_values(keys: tuple[str, ...]) -> TagValues:
    """A function giving the values of `keys` in a tags dict, None where absent. It runs for
    every tagged event: written out for up to four keys, it costs a third of the general
    `tuple(map(tags.get, keys))` (measured, BENCHMARKS.md)."""
    match keys:
        case (a,):
            return lambda tags: (tags.get(a),)
        case (a, b):
            return lambda tags: (tags.get(a), tags.get(b))
        case (a, b, c):
            return lambda tags: (tags.get(a), tags.get(b), tags.get(c))
        case (a, b, c, d):
            return lambda tags: (tags.get(a), tags.get(b), tags.get(c), tags.get(d))
    return lambda tags: tuple(map(tags.get, keys))


@dataclass(slots=True)
class _Name:
    """What the series of one (project, type, name, built-in dimension) have in common."""

    project: str
    kind: str
    name: str
    currency: str
    builtin: Dims  # `unit` or `action`
    tags: tuple[str, ...]  # the tags that become dimensions, in the configured order
    values_of: TagValues  # an event's values of `tags` (None where absent)
    plain: Series | None = None  # the series of events without any dimension tag
    by_values: dict[tuple[str | None, ...], Series] = field(default_factory=dict)


class SeriesResolver:
    """Maps events to series; remembers the values each dimension has taken (bounded by the cap).
    Called once per event from the worker's single thread."""

    def __init__(self, config: SeriesConfig) -> None:
        self._config = config
        self._tags_for: dict[tuple[str, str], tuple[str, ...]] = {}
        self._seen: dict[tuple[str, str, str, str], set[str]] = {}
        self.overflowed = 0
        self._names: dict[tuple[str, str, str, str], _Name] = {}  # (project, type, name, extra)
        # The same, nested project -> type -> name -> extra: an event looks its name up by the
        # strings it carries, with no key tuple to build and hash (it runs for every event).
        self._index: dict[str, dict[str, dict[str, dict[str, _Name]]]] = {}
        self._by_key: dict[SeriesKey, Series] = {}
        # (project, "funnel:step") -> the step's position in its funnel, as events report it.
        self.step_index: dict[tuple[str, str], int] = {}

    def __len__(self) -> int:
        """How many series objects the resolver holds (live or not; see `keep_only`)."""
        return len(self._by_key)

    def resolve(self, project: str, event: Event) -> Series:
        """The event's series."""
        try:
            kinds = self._index[project]
            if isinstance(event, Performance):  # the most frequent type first
                name = kinds["performance"][event.metric][event.unit]
            elif isinstance(event, Feature):
                name = kinds["feature"][event.feature][event.action]
            elif isinstance(event, Revenue):
                name = kinds["revenue"][event.name][event.currency]
            else:
                name = kinds["conversion"][event.funnel][event.step]
        except KeyError:
            name = self._name(project, event)
        tags = event.tags
        if not tags or not name.tags:
            return name.plain or self._series(name, ())
        values = name.values_of(tags)
        return name.by_values.get(values) or self._series(name, values)

    def note_step(self, series: Series, events: list[Event]) -> None:
        """Remember the position in its funnel that a conversion series' newest events report."""
        if series.step is None:
            return
        for event in reversed(events):
            if isinstance(event, Conversion) and event.step_index is not None:
                self.step_index[series.step] = event.step_index
                return

    def _name(self, project: str, event: Event) -> _Name:
        currency = ""
        builtin: Dims = ()
        if isinstance(event, Performance):
            name, extra = event.metric, event.unit
            builtin = (("unit", extra),)
        elif isinstance(event, Feature):
            name, extra = event.feature, event.action
            builtin = (("action", extra),)
        elif isinstance(event, Revenue):
            name, extra = event.name, event.currency
            currency = extra
        else:
            name, extra = f"{event.funnel}:{event.step}", event.step
        lookup = event.funnel if isinstance(event, Conversion) else name
        tags = self._dimension_tags(event.kind, name)
        found = self._names[(project, event.kind, lookup, extra)] = _Name(
            project, event.kind, name, currency, builtin, tags, tag_values(tags)
        )
        self._indexed(project, event.kind, lookup)[extra] = found
        return found

    def _indexed(self, project: str, kind: str, name: str) -> dict[str, _Name]:
        return self._index.setdefault(project, {}).setdefault(kind, {}).setdefault(name, {})

    def _series(self, name: _Name, values: tuple[str | None, ...]) -> Series:
        """The series of raw tag values (none: an event without tags) not resolved before:
        capped, then shared with any other values that cap to the same dimensions."""
        dims = name.builtin + tuple(
            (tag, self._capped(name, tag, value))
            for tag, value in zip(name.tags, values, strict=False)
            if value is not None
        )
        key = (name.project, name.kind, name.name, name.currency, dims)
        series = self._by_key.get(key)
        if series is None:
            series = self._by_key[key] = Series(key, series_id(key), name.tags)
        if not values:
            name.plain = series
        else:
            if len(name.by_values) >= _MAX_VALUE_COMBINATIONS:
                name.by_values.clear()
            name.by_values[values] = series
        return series

    def _dimension_tags(self, kind: str, name: str) -> tuple[str, ...]:
        found = self._tags_for.get((kind, name))
        if found is None:
            tags: list[str] = []
            for rule in self._config.rules:
                if (rule.type is None or rule.type == kind) and fnmatch.fnmatchcase(name, rule.name):
                    tags.extend(tag for tag in rule.tags if tag not in tags)
            found = self._tags_for[(kind, name)] = tuple(tags)
        return found

    def _capped(self, name: _Name, dim: str, value: str) -> str:
        seen = self._seen.get((name.project, name.kind, name.name, dim))
        if seen is None:
            seen = self._seen[(name.project, name.kind, name.name, dim)] = set()
        elif value in seen:
            return value
        if len(seen) >= self._config.max_values:
            self.overflowed += 1
            return OVERFLOW
        seen.add(value)
        return value

    def series(self, key: SeriesKey) -> Series:
        """The series of a key read back from a checkpoint."""
        series = self._by_key.get(key)
        if series is None:
            _, kind, name, _, _ = key
            series = self._by_key[key] = Series(key, series_id(key), self._dimension_tags(kind, name))
        return series

    def keep_only(self, live: Iterable[Series]) -> None:
        """Forget every series but `live` (those with an open window), so that series whose
        windows all closed do not accumulate. A forgotten series that sends again gets a new
        object; the caller guarantees no open window holds the old one."""
        self._by_key = {series.key: series for series in live}
        for name in self._names.values():
            if name.plain is not None and name.plain.key not in self._by_key:
                name.plain = None
            name.by_values = {v: s for v, s in name.by_values.items() if s.key in self._by_key}
        self._names = {k: n for k, n in self._names.items() if n.plain is not None or n.by_values}
        self._index = {}
        for (project, kind, lookup, extra), found in self._names.items():
            self._indexed(project, kind, lookup)[extra] = found

    def to_state(self) -> dict[str, Any]:
        """The dimension values seen so far and the funnel step positions (for a checkpoint)."""
        return {
            "seen": [[*key, sorted(values)] for key, values in self._seen.items()],
            "step_index": [[project, name, index] for (project, name), index in self.step_index.items()],
        }

    def restore(self, state: dict[str, Any]) -> None:
        self._seen = {(p, k, n, d): set(values) for p, k, n, d, values in state["seen"]}
        self.step_index = {(project, name): index for project, name, index in state["step_index"]}
