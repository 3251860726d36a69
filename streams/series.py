"""From an event (a msgspec struct of an envelope, streams.envelope.Event) to its series.

A series is (project, type, name, currency, dims), made of an event's fields as the table of event
types says (schemas/event_types.py): `name` is the revenue name, the metric, the feature or
`funnel:step`; `dims` holds the built-in dimensions (`action`, `unit`) and the tags the series
config names, each dimension capped in distinct values, and each (project, type)
capped in distinct names (see schemas/series.py).

Resolving runs for every event, so it is a lookup: the resolver remembers, per (project, type,
name and built-in dimension), which raw tag values led to which series. Only an unseen
combination goes through the dimension rules and the caps; caching those answers changes none,
since a value's fate under its cap never changes once decided. The events of a name over the
cap are the exception: they take the slow path every time, since remembering their names is
what the cap prevents (each is counted there, see `take_overflow`).

What the caps admitted (names, built-in and tag values) is never forgotten, and it is part of
the checkpoint: a name's fate depends only on the names before it in its partition, so a worker
replaying records from a checkpoint decides every event as the first run did.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from schemas.event_types import EVENT_KINDS, EventKind
from schemas.series import MAX_NAMES, OVERFLOW, SeriesConfig, overflow_name
from streams.envelope import EVENT_TYPES, Conversion, Event, WireEvent

Dims = tuple[tuple[str, str], ...]
SeriesKey = tuple[str, str, str, str, Dims]  # project, type, name, currency, dims
_MAX_VALUE_COMBINATIONS = 10_000  # per name: raw tag values remembered; a runaway tag refills it
# Names over the cap reported (dead-lettered) per project and type; later ones are only counted.
REPORTED_NAMES = 100
_CONVERSION_OVERFLOW = overflow_name("conversion")


def _index_key(kind: EventKind) -> tuple[str, str, str]:
    first, second = kind.key
    return kind.type, first, second


# Per event struct: its type and the two fields whose values find its name in the resolver's index.
_INDEX_KEYS: dict[type[WireEvent], tuple[str, str, str]] = {
    struct: _index_key(EVENT_KINDS[struct.kind]) for struct in EVENT_TYPES
}


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
    spec: EventKind = field(init=False)  # its type's entry in the table of event types
    step: tuple[str, str] | None = field(init=False)  # conversion: its key in `step_index`
    head: bytes = field(init=False)  # its final records' unchanging fields, as JSON (see `_head`)
    # The alert rules' plans for its events (streams/alerts.py), set by the engine of the
    # partition whose resolver made it; None until its first batch.
    rule_plans: tuple[object, ...] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.kind = self.key[1]
        self.spec = EVENT_KINDS[self.kind]
        funnel_step = self.kind == "conversion" and self.key[2] != _CONVERSION_OVERFLOW
        self.step = (self.key[0], self.key[2]) if funnel_step else None  # overflow: steps of any funnel
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
    every tagged event: written out for up to four keys, it is cheaper than the general
    `tuple(map(tags.get, keys))` (measured, see BENCHMARKS.md)."""
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
    overflow: bool = False  # the type's `__overflow__` name: kept out of the index (see `resolve`)


class SeriesResolver:
    """Maps events to series; remembers the names each (project, type) and the values each
    dimension has taken (bounded by the caps). Called once per event from the worker's single
    thread.

    The events of names over the cap go to the type's `__overflow__` name; `take_overflow` tells
    how many since it was last called, and which names went over (each once, at most
    REPORTED_NAMES per project and type, with the first of its events), for the caller to count
    and dead-letter.
    """

    def __init__(self, config: SeriesConfig, max_names: int = MAX_NAMES) -> None:
        self._config = config
        self._max_names = max_names
        self._tags_for: dict[tuple[str, str], tuple[str, ...]] = {}
        self._seen: dict[tuple[str, str, str, str], set[str]] = {}
        # (project, type) -> the names admitted under the cap; (project, type, name) -> the
        # values its built-in dimension took (action, unit or currency; not for conversion),
        # one value as itself (most names have one: no set for each of 10,000 names);
        # (project, type) -> the names over the cap reported so far.
        self._admitted: dict[tuple[str, str], set[str]] = {}
        self._extras: dict[tuple[str, str, str], str | set[str]] = {}
        self._reported: dict[tuple[str, str], set[str]] = {}
        self.overflow_events: dict[str, int] = {}  # type -> events counted under `__overflow__`
        self.overflowed: list[tuple[Event, str]] = []  # (first event of a name over the cap, reason)
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
        kind, first, second = _INDEX_KEYS[type(event)]
        try:
            name = self._index[project][kind][getattr(event, first)][getattr(event, second)]
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

    def take_overflow(self) -> tuple[dict[str, int], list[tuple[Event, str]]]:
        """The events counted under `__overflow__` since the last call, by type, and the names
        that went over the cap meanwhile: (the first of its events, a dead-letter reason)."""
        counts, names = self.overflow_events, self.overflowed
        if counts:
            self.overflow_events = {}
        if names:
            self.overflowed = []
        return counts, names

    def _name(self, project: str, event: Event) -> _Name:
        """The name of an event the index did not know: a name or built-in value not seen
        before (admitted or capped now), or one over a cap."""
        kind = event.kind
        spec = EVENT_KINDS[kind]
        name: str = ":".join([getattr(event, field) for field in spec.name])
        lookup: str = getattr(event, spec.key[0])
        extra: str = getattr(event, spec.key[1])
        overflow = not self._admit(project, kind, name)
        if overflow:
            self._count_overflow(project, kind, name, event)
            name = lookup = overflow_name(kind)
            if spec.split is None:
                extra = OVERFLOW
        if spec.split is not None:  # else `extra` is part of the name (a conversion's step)
            extra = self._capped_extra(project, kind, name, extra)
        key = (project, kind, lookup, extra)
        found = self._names.get(key)
        if found is None:
            tags = self._dimension_tags(kind, name)
            found = self._names[key] = _Name(
                project,
                kind,
                name,
                extra if spec.currency else "",
                ((spec.dimension, extra),) if spec.dimension else (),
                tags,
                tag_values(tags),
                overflow=overflow,
            )
            if not overflow:
                self._indexed(project, kind, lookup)[extra] = found
        return found

    def _admit(self, project: str, kind: str, name: str) -> bool:
        """Whether `name` is one of the project's first `max_names` names of its type."""
        names = self._admitted.get((project, kind))
        if names is None:
            names = self._admitted[(project, kind)] = set()
        elif name in names:
            return True
        if len(names) >= self._max_names or name == overflow_name(kind):
            return False
        names.add(name)
        return True

    def _count_overflow(self, project: str, kind: str, name: str, event: Event) -> None:
        self.overflow_events[kind] = self.overflow_events.get(kind, 0) + 1
        reported = self._reported.get((project, kind))
        if reported is None:
            reported = self._reported[(project, kind)] = set()
        if len(reported) < REPORTED_NAMES and name not in reported:
            reported.add(name)
            self.overflowed.append((event, self._overflow_reason(kind, name, len(reported))))

    def _overflow_reason(self, kind: str, name: str, reported: int) -> str:
        last = " (the last name of this type reported; later ones are only counted)"
        return (
            f"overflow: the project has {self._max_names:,} {kind} names, the cap "
            f"(COSNAP_MAX_NAMES_PER_TYPE): the events of {name!r} are counted under the name "
            f"{overflow_name(kind)!r}, not dropped{last if reported == REPORTED_NAMES else ''}"
        )

    def _capped_extra(self, project: str, kind: str, name: str, value: str) -> str:
        """A built-in dimension's value (action, unit, currency) under the per-name cap."""
        key = (project, kind, name)
        seen = self._extras.get(key)
        if seen is None:
            self._extras[key] = value
            return value
        if isinstance(seen, str):
            if value == seen:
                return value
            if self._config.max_values < 2:
                return OVERFLOW
            self._extras[key] = {seen, value}
            return value
        if value in seen:
            return value
        if len(seen) >= self._config.max_values:
            return OVERFLOW
        seen.add(value)
        return value

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
            if not found.overflow:
                self._indexed(project, kind, lookup)[extra] = found

    def to_state(self) -> dict[str, Any]:
        """What the caps admitted so far (names, built-in and tag values), the names over the
        cap already reported, and the funnel step positions (for a checkpoint)."""
        return {
            "seen": [[*key, sorted(values)] for key, values in self._seen.items()],
            "names": [[project, kind, list(names)] for (project, kind), names in self._admitted.items()],
            "extras": [[*key, [v] if isinstance(v, str) else list(v)] for key, v in self._extras.items()],
            "reported": [[project, kind, list(names)] for (project, kind), names in self._reported.items()],
            "step_index": [[project, name, index] for (project, name), index in self.step_index.items()],
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Resume from `to_state()`, after the series of the open windows were read back
        (`series`). A checkpoint from before the name cap admits the names of those series."""
        self._seen = {(p, k, n, d): set(values) for p, k, n, d, values in state["seen"]}
        self.step_index = {(project, name): index for project, name, index in state["step_index"]}
        self._reported = {(p, k): set(names) for p, k, names in state.get("reported", [])}
        if "names" in state:
            self._admitted = {(p, k): set(names) for p, k, names in state["names"]}
            self._extras = {
                (p, k, n): values[0] if len(values) == 1 else set(values)
                for p, k, n, values in state["extras"]
            }
            return
        self._admitted, self._extras = {}, {}
        for project, kind, name, currency, dims in self._by_key:
            if name != overflow_name(kind):
                self._admitted.setdefault((project, kind), set()).add(name)
            spec = EVENT_KINDS[kind]
            extra = currency if spec.currency else dict(dims).get(spec.dimension) if spec.dimension else None
            if extra is not None:
                self._capped_extra(project, kind, name, extra)
