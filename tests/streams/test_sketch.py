"""DDSketch: relative error within 1 % on awkward distributions, merges, wire round trip."""

from __future__ import annotations

import random

import pytest

from streams.sketch import RELATIVE_ACCURACY, DDSketch

QUANTILES = (0.5, 0.9, 0.95, 0.99)


def exact(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))]


@pytest.mark.parametrize(
    "draw",
    [
        lambda r: r.lognormvariate(4.7, 0.5),  # API latency, ms
        lambda r: r.lognormvariate(7.7, 1.5),  # AI provider latency with a long tail
        lambda r: r.uniform(0.001, 1e6),
        lambda r: r.expovariate(1 / 300),
        lambda r: r.choice([0.0, 1.0, 5.0, 250.0]),
        lambda r: r.gauss(0, 100),  # negative values too
    ],
)
def test_quantiles_are_within_the_relative_accuracy(draw: object) -> None:
    rng = random.Random(7)
    values = [draw(rng) for _ in range(20_000)]  # type: ignore[operator]
    sketch = DDSketch()
    for v in values:
        sketch.add(v)
    for q in QUANTILES:
        truth = exact(values, q)
        estimate = sketch.quantile(q)
        assert estimate is not None
        assert abs(estimate - truth) <= RELATIVE_ACCURACY * abs(truth) + 1e-9, (q, truth, estimate)


def test_merged_sketches_answer_like_one_sketch_of_everything() -> None:
    rng = random.Random(3)
    parts = [[rng.lognormvariate(5, 1) for _ in range(3000)] for _ in range(6)]
    merged, whole = DDSketch(), DDSketch()
    for part in parts:
        sketch = DDSketch()
        for v in part:
            sketch.add(v)
            whole.add(v)
        merged.merge(sketch)
    assert merged == whole
    everything = [v for part in parts for v in part]
    p99 = merged.quantile(0.99)
    assert p99 is not None and abs(p99 - exact(everything, 0.99)) <= 0.01 * exact(everything, 0.99)


def test_wire_round_trip_and_empty_sketch() -> None:
    sketch = DDSketch()
    for v in (0.0, -3.5, 12.0, 12.1, 1e5):
        sketch.add(v)
    assert DDSketch.from_wire(sketch.to_wire()) == sketch
    assert DDSketch().quantile(0.5) is None


def test_quantiles_in_one_pass_match_one_at_a_time() -> None:
    rng = random.Random(9)
    sketch = DDSketch()
    for _ in range(5000):
        sketch.add(rng.gauss(50, 80))
    qs = (0.0, 0.01, 0.5, 0.9, 0.95, 0.99, 1.0)
    assert sketch.quantiles(qs) == [sketch.quantile(q) for q in qs]
    assert DDSketch().quantiles((0.5,)) == [None]
