"""DDSketch: a mergeable quantile sketch with a relative-error guarantee.

A value v > 0 falls in bin ceil(log_gamma(v)) with gamma = (1 + a) / (1 - a); answering with the
bin's midpoint 2 * gamma^i / (gamma + 1) is within a relative error a of every value in the bin.
Merging adds bin counts, so panes merge into minutes and hours without losing the guarantee
(Masson, Rim, Lee: "DDSketch", VLDB 2019). Values <= 0 are kept in a zero bin and negative
values in a mirrored store, so any finite measurement fits. Stores are sparse dicts: a sketch
costs memory per distinct bin it holds, not per possible bin.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass, field
from itertools import accumulate

RELATIVE_ACCURACY = 0.01
_GAMMA = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
_LOG_GAMMA = math.log(_GAMMA)
_MIN_POSITIVE = 1e-9  # below this a value counts as zero (a 1 ns latency is 0 for our units)


_BINS: dict[int, int] = {}  # one int object per bin index, shared by every sketch's store


def _bin(value: float) -> int:
    computed = math.ceil(math.log(value) / _LOG_GAMMA)
    return _BINS.setdefault(computed, computed)


def bin_of(value: float) -> tuple[int, int]:
    """The bin `add` puts `value` in, as (sign, index): (1, i) positive, (-1, i) negative, (0, 0) zero."""
    if value > _MIN_POSITIVE:
        return (1, _bin(value))
    if value < -_MIN_POSITIVE:
        return (-1, _bin(-value))
    return (0, 0)


def _value(index: int) -> float:
    return 2 * _GAMMA**index / (_GAMMA + 1)


@dataclass(slots=True)
class DDSketch:
    positive: dict[int, int] = field(default_factory=dict)
    negative: dict[int, int] | None = None  # created on the first negative value (latencies have none)
    zeros: int = 0
    count: int = 0

    def add(self, value: float) -> None:
        if value > _MIN_POSITIVE:
            index = _bin(value)
            self.positive[index] = self.positive.get(index, 0) + 1
        elif value < -_MIN_POSITIVE:
            index = _bin(-value)
            if self.negative is None:
                self.negative = {}
            self.negative[index] = self.negative.get(index, 0) + 1
        else:
            self.zeros += 1
        self.count += 1

    def add_all(self, values: list[float], low: float) -> None:
        """`add` each of `values`, whose minimum is `low`: when all are positive, their bins are
        computed over the list at once (a lookup per value in a table of values seen cost more,
        in cache misses, than the logarithm)."""
        if low <= _MIN_POSITIVE:
            for value in values:
                self.add(value)
            return
        positive, shared = self.positive, _BINS
        for index in [math.ceil(math.log(value) / _LOG_GAMMA) for value in values]:
            count = positive.get(index)
            if count is None:
                positive[shared.setdefault(index, index)] = 1
            else:
                positive[index] = count + 1
        self.count += len(values)

    @classmethod
    def of(cls, *values: float) -> DDSketch:
        sketch = cls()
        for value in values:
            sketch.add(value)
        return sketch

    def merge(self, other: DDSketch) -> None:
        for index, n in other.positive.items():
            self.positive[index] = self.positive.get(index, 0) + n
        if other.negative:
            if self.negative is None:
                self.negative = {}
            for index, n in other.negative.items():
                self.negative[index] = self.negative.get(index, 0) + n
        self.zeros += other.zeros
        self.count += other.count

    def quantiles(self, qs: tuple[float, ...]) -> list[float | None]:
        """Several quantiles (ascending `qs`) in one pass over the bins: the cumulative counts
        are summed in C, and only the bins the quantiles fall in are turned into values."""
        if self.count == 0:
            return [None] * len(qs)
        negative = self.negative or {}
        below = sorted(negative, reverse=True)  # most negative first
        above = sorted(self.positive)
        counts = [*map(negative.__getitem__, below), self.zeros, *map(self.positive.__getitem__, above)]
        cumulative = list(accumulate(counts))
        out: list[float | None] = []
        for q in qs:
            # The first bin whose cumulative count passes the rank (an empty zero bin never does).
            at = min(bisect_right(cumulative, q * (self.count - 1)), len(counts) - 1)
            if at < len(below):
                out.append(-_value(below[at]))
            elif at == len(below):
                out.append(0.0)
            else:
                out.append(_value(above[at - len(below) - 1]))
        return out

    def quantile(self, q: float) -> float | None:
        """The q-quantile (0 <= q <= 1) within the relative accuracy; None for an empty sketch."""
        if self.count == 0:
            return None
        rank = q * (self.count - 1)
        seen = 0
        negative = self.negative or {}
        for index in sorted(negative, reverse=True):  # most negative first
            seen += negative[index]
            if seen > rank:
                return -_value(index)
        seen += self.zeros
        if seen > rank:
            return 0.0
        for index in sorted(self.positive):
            seen += self.positive[index]
            if seen > rank:
                return _value(index)
        return _value(max(self.positive))

    def to_wire(self) -> dict[str, object]:
        """The form of schemas.records.Sketch (bin index -> count), which `from_wire` reads back.
        Its keys are ints, for orjson's OPT_NON_STR_KEYS (no string per bin is made), and it
        shares the bins with the sketch: encode it before the sketch changes."""
        return {
            "accuracy": RELATIVE_ACCURACY,
            "positive": self.positive,
            "negative": self.negative or {},
            "zeros": self.zeros,
        }

    @classmethod
    def from_wire(cls, wire: dict[str, object]) -> DDSketch:
        """Read back `to_wire()`, or the sketch as orjson writes the dataclass."""
        positive = {int(k): int(v) for k, v in dict(wire["positive"]).items()}  # type: ignore[call-overload]
        negative = {int(k): int(v) for k, v in dict(wire["negative"] or {}).items()}  # type: ignore[call-overload]
        zeros = int(wire["zeros"])  # type: ignore[call-overload]
        return cls(positive, negative or None, zeros, sum(positive.values()) + sum(negative.values()) + zeros)
