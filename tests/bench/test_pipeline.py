"""The soak's RSS trend of bench/pipeline: its slope and when it is flat, and the broker judged by
its live heap (pure; the soak itself is a benchmark, not a test)."""

from __future__ import annotations

import math
from typing import cast

from hypothesis import given
from hypothesis import strategies as st

from bench.pipeline.__main__ import (
    FLAT_MIB_PER_10MIN,
    SAMPLE_S,
    WARMUP_S,
    Soak,
    Step,
    heap_info,
    jstat_heap,
    trend,
)

MIB = 1024  # kB


def samples(start_mib: float, mib_per_10min: float, minutes: int = 30) -> list[tuple[float, int]]:
    """An RSS sample every SAMPLE_S for `minutes`, growing linearly (kB, as /proc reports it)."""
    count = int(minutes * 60 / SAMPLE_S) + 1
    return [
        (i * SAMPLE_S, round((start_mib + mib_per_10min * i * SAMPLE_S / 600) * MIB)) for i in range(count)
    ]


@given(
    start_mib=st.floats(min_value=20, max_value=4000),
    mib_per_10min=st.floats(min_value=-50, max_value=200),
)
def test_the_slope_of_a_steady_growth_is_found_and_judged_against_its_bound(
    start_mib: float, mib_per_10min: float
) -> None:
    found = trend(samples(start_mib, mib_per_10min), WARMUP_S)
    assert math.isclose(found.slope_mib_per_10min, mib_per_10min, abs_tol=0.01)
    bound = max(FLAT_MIB_PER_10MIN, 0.01 * found.start_mib)
    assert found.bound_mib_per_10min == bound
    if mib_per_10min <= bound - 0.01:
        assert found.flat
    if mib_per_10min >= bound + 0.01:
        assert not found.flat


def test_the_warm_up_is_left_out_and_noise_is_flat() -> None:
    # 300 MiB in the warm-up (caches filling), then +-3 MiB around 800 MiB: flat.
    warm = [(at, round((500 + at / WARMUP_S * 300) * MIB)) for at in (0.0, 30.0, 60.0, 90.0)]
    steady = [(WARMUP_S + i * SAMPLE_S, (800 + (3 if i % 2 else -3)) * MIB) for i in range(57)]
    found = trend(warm + steady, WARMUP_S)
    assert (found.start_mib, found.end_mib, found.max_mib) == (797, 797, 803)
    assert abs(found.slope_mib_per_10min) < 0.5
    assert found.flat
    # With the warm-up in, the same process would look like it grows.
    assert not trend(warm + steady, 0).flat
    # Samples after the load's end (the benchmark's own reads) are left out when told.
    after_load = [(WARMUP_S + 57 * SAMPLE_S, 900 * MIB)]
    assert trend(warm + steady + after_load, WARMUP_S, WARMUP_S + 56 * SAMPLE_S) == found


def test_a_leak_of_a_large_process_is_judged_by_its_share() -> None:
    # 2 GiB: the bound is 1 % of it, 20.5 MiB per 10 min; 15 is flat, 25 is not.
    assert trend(samples(2048, 15), WARMUP_S).flat
    assert not trend(samples(2048, 25), WARMUP_S).flat
    # 100 MiB: the bound is 5 MiB per 10 min.
    assert not trend(samples(100, 6), WARMUP_S).flat


def test_too_few_samples_are_never_flat() -> None:
    one = trend([(WARMUP_S, 500 * MIB)], WARMUP_S)
    assert one.start_mib == 500
    assert math.isnan(one.slope_mib_per_10min)
    assert not one.flat
    assert not trend([], WARMUP_S).flat


def test_the_jvms_heap_is_read_from_jcmd_and_its_live_heap_judges_the_broker() -> None:
    text = (
        "12345:\n garbage-first heap   total 401408K, used 187392K [0x00000000d0000000, 0x0000000100000000)\n"
        "  region size 1024K, 30 young (30720K), 4 survivors (4096K)\n"
        " Metaspace       used 61234K, committed 61824K, reserved 1105920K\n"
    )
    assert heap_info(text) == (401408, 187392)
    assert heap_info("12345:\ncom.sun.tools.attach.AttachNotSupportedException") is None
    header = [
        "S0C",
        "S1C",
        "S0U",
        "S1U",
        "EC",
        "EU",
        "OC",
        "OU",
        "MC",
        "MU",
        "CCSC",
        "CCSU",
        "YGC",
        "YGCT",
        "FGC",
        "FGCT",
        "CGC",
        "CGCT",
        "GCT",
    ]
    line = "0.0 4096.0 0.0 4096.0 155648.0 90112.0 241664.0 93184.0 61824.0 61234.1 7168.0 6500.2 "
    line += "120 1.234 0 0.000 8 0.050 1.284"
    assert jstat_heap(header, line.split()) == (401408, 187392)
    assert jstat_heap(header, ["-"] * len(header)) is None
    assert jstat_heap(header, line.split()[:5]) is None

    steady = trend(samples(500, 0.5), WARMUP_S)
    stepped = trend(samples(450, 120), WARMUP_S)  # as the broker's RSS once G1 committed more heap
    flat_heap = trend([(WARMUP_S + i * 300, 180 * MIB) for i in range(5)], WARMUP_S, floor_s=0)
    growing_heap = trend([(WARMUP_S + i * 300, (180 + 10 * i) * MIB) for i in range(5)], WARMUP_S, floor_s=0)
    assert not stepped.flat and flat_heap.flat and not growing_heap.flat
    judged = {"sink": steady, "kafka": stepped, "loadgen": stepped, "bench": stepped}
    step = cast(Step, None)  # the holds' checks are not the trend's
    assert Soak(step, judged, [], flat_heap, []).flat
    assert not Soak(step, judged, [], growing_heap, []).flat
    assert not Soak(step, judged | {"sink": stepped}, [], flat_heap, []).flat
