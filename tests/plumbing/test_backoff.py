"""The services' backoff (plumbing.backoff.Backoff): before retry n it waits between half and all of
the ceiling min(cap, initial * 2 ** (n - 1)), never more than the cap, whatever n is."""

from __future__ import annotations

from itertools import islice

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plumbing.backoff import Backoff

initials = st.floats(min_value=1e-3, max_value=60.0, allow_nan=False, allow_infinity=False)
factors = st.floats(min_value=1.0, max_value=1e4, allow_nan=False, allow_infinity=False)
attempts = st.integers(min_value=-5, max_value=200) | st.integers(min_value=200, max_value=10**9)


def ceiling(backoff: Backoff, attempt: int) -> float:
    """The ceiling before retry `attempt`, computed here on its own (an attempt below 1 is the first)."""
    doublings = max(attempt, 1) - 1
    return backoff.cap if doublings >= 64 else min(backoff.cap, backoff.initial * 2.0**doublings)


@given(initial=initials, factor=factors, attempt=attempts)
def test_a_delay_lies_between_half_the_ceiling_and_the_ceiling(
    initial: float, factor: float, attempt: int
) -> None:
    backoff = Backoff(initial=initial, cap=initial * factor)
    top = ceiling(backoff, attempt)
    delay = backoff.delay(attempt)
    assert top / 2 <= delay <= top
    assert delay <= backoff.cap


@given(initial=initials, factor=factors, attempt=st.integers(min_value=64, max_value=10**9))
def test_late_retries_wait_between_half_the_cap_and_the_cap(
    initial: float, factor: float, attempt: int
) -> None:
    backoff = Backoff(initial=initial, cap=initial * factor)
    assert backoff.cap / 2 <= backoff.delay(attempt) <= backoff.cap


@given(initial=initials, factor=factors)
def test_delays_follow_the_retries_in_order(initial: float, factor: float) -> None:
    backoff = Backoff(initial=initial, cap=initial * factor)
    for attempt, delay in enumerate(islice(backoff.delays(), 40), start=1):
        top = ceiling(backoff, attempt)
        assert top / 2 <= delay <= top


@given(initial=initials, factor=factors, attempt=attempts, retry_after=st.floats(min_value=0, max_value=300))
def test_a_retry_after_replaces_the_computed_delay(
    initial: float, factor: float, attempt: int, retry_after: float
) -> None:
    assert (
        Backoff(initial=initial, cap=initial * factor).delay(attempt, retry_after=retry_after) == retry_after
    )


def test_delays_are_jittered() -> None:
    backoff = Backoff(initial=1.0, cap=1.0)
    delays = [backoff.delay(1) for _ in range(200)]
    assert min(delays) < 0.6 and max(delays) > 0.9  # spread over [0.5, 1], not one value


@pytest.mark.parametrize(("initial", "cap"), [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0)])
def test_a_backoff_needs_a_positive_initial_delay_below_its_cap(initial: float, cap: float) -> None:
    with pytest.raises(ValueError):
        Backoff(initial=initial, cap=cap)
