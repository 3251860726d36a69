"""From an event (a wire dict of an envelope) to its series and the value it adds.

A series is (project, type, name, currency, dims): `name` is the revenue name, the metric, the
feature or `funnel:step`; `dims` holds the built-in dimensions (`action`, `unit`) and the tags
the series config names, each dimension capped in distinct values (see schemas/series.py).
"""

from __future__ import annotations

import fnmatch
import hashlib
from decimal import Decimal
from typing import Any

from schemas.series import OVERFLOW, SeriesConfig

Dims = tuple[tuple[str, str], ...]
SeriesKey = tuple[str, str, str, str, Dims]  # project, type, name, currency, dims
_ONE = Decimal(1)
_MAX_INTERNED = 1_000_000


def series_id(key: SeriesKey) -> str:
    """A stable id of a series, the same in every process and release."""
    project, kind, name, currency, dims = key
    text = "\x1f".join([project, kind, name, currency, *(f"{k}={v}" for k, v in dims)])
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


class SeriesResolver:
    """Maps events to series; remembers the values each dimension has taken (bounded by the cap).
    Called once per event from the worker's single thread."""

    def __init__(self, config: SeriesConfig) -> None:
        self._config = config
        self._tags_for: dict[tuple[str, str], tuple[str, ...]] = {}
        self._seen: dict[tuple[str, str, str, str], set[str]] = {}
        self.overflowed = 0
        self._keys: dict[SeriesKey, SeriesKey] = {}
        self._ids: dict[SeriesKey, str] = {}
        # (project, "funnel:step") -> the step's position in its funnel, as events report it.
        self.step_index: dict[tuple[str, str], int] = {}

    def _dimension_tags(self, kind: str, name: str) -> tuple[str, ...]:
        found = self._tags_for.get((kind, name))
        if found is None:
            tags: list[str] = []
            for rule in self._config.rules:
                if (rule.type is None or rule.type == kind) and fnmatch.fnmatchcase(name, rule.name):
                    tags.extend(tag for tag in rule.tags if tag not in tags)
            found = self._tags_for[(kind, name)] = tuple(tags)
        return found

    def _capped(self, project: str, kind: str, name: str, dim: str, value: str) -> str:
        seen = self._seen.get((project, kind, name, dim))
        if seen is None:
            seen = self._seen[(project, kind, name, dim)] = set()
        elif value in seen:
            return value
        if len(seen) >= self._config.max_values:
            self.overflowed += 1
            return OVERFLOW
        seen.add(value)
        return value

    def id_of(self, key: SeriesKey) -> str:
        """`series_id(key)`, remembered (windows of a series close again and again)."""
        found = self._ids.get(key)
        if found is None:
            if len(self._ids) > _MAX_INTERNED:
                self._ids.clear()
            found = self._ids[key] = series_id(key)
        return found

    def to_state(self) -> dict[str, Any]:
        """The dimension values seen so far and the funnel step positions (for a checkpoint)."""
        return {
            "seen": [[*key, sorted(values)] for key, values in self._seen.items()],
            "step_index": [[project, name, index] for (project, name), index in self.step_index.items()],
        }

    def restore(self, state: dict[str, Any]) -> None:
        self._seen = {(p, k, n, d): set(values) for p, k, n, d, values in state["seen"]}
        self.step_index = {(project, name): index for project, name, index in state["step_index"]}

    def resolve(
        self, project: str, event: dict[str, Any]
    ) -> tuple[SeriesKey, Decimal, float | Decimal | int]:
        """The event's series, what it adds to the sum (exact) and its value as min/max keep it:
        revenue its amount (per currency), performance its value (the float as sent, and its
        decimal for the sum); conversion and feature events add 1 (their sum is their count)."""
        kind = event["type"]
        currency = ""
        point: float | Decimal | int
        if kind == "performance":  # the most frequent type first
            name, point = event["metric"], event["value"]
            value = Decimal(repr(point))
            dims = [("unit", event["unit"])]
        elif kind == "feature":
            name, value, point = event["feature"], _ONE, 1
            dims = [("action", event["action"])]
        elif kind == "revenue":
            name, currency, value, dims = event["name"], event["currency"], Decimal(event["amount"]), []
            point = value
        else:
            name, value, point, dims = f"{event['funnel']}:{event['step']}", _ONE, 1, []
            if "step_index" in event:
                self.step_index[(project, name)] = event["step_index"]
        tags = event.get("tags")
        if tags:
            for tag in self._dimension_tags(kind, name):
                if tag in tags:
                    dims.append((tag, self._capped(project, kind, name, tag, tags[tag])))
        key = (project, kind, name, currency, tuple(dims))
        # One key object per series, however many windows and events refer to it. Clearing the
        # table only stops the sharing for keys already held, so it is bounded that way.
        if len(self._keys) > _MAX_INTERNED:
            self._keys.clear()
        return self._keys.setdefault(key, key), value, point
