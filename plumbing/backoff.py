"""How long to wait before trying again: the one backoff every retry loop of the services uses.

The client SDK keeps its own copy (server and client share no code); both wait between half and
all of a doubling ceiling, so that many retrying parties do not try again in step.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

# A server asking for longer than this is more likely misconfigured than overloaded.
MAX_RETRY_AFTER_S = 300.0


class Backoff:
    """Exponential backoff with jitter: before retry `n` (1-based) wait a random time between
    half and all of `min(cap, initial * 2 ** (n - 1))`. A `Retry-After` from the other side
    replaces the computed delay."""

    def __init__(self, initial: float = 0.2, cap: float = 10.0) -> None:
        if initial <= 0 or cap < initial:
            raise ValueError("backoff needs 0 < initial <= cap")
        self.initial = initial
        self.cap = cap

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return retry_after
        ceiling = min(self.cap, self.initial * 2 ** min(max(attempt, 1) - 1, 30))
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not a secret

    def delays(self) -> Iterator[float]:
        """The waits before retries 1, 2, 3, ... without end: `for delay in backoff.delays()`
        around a try that breaks out when it succeeds."""
        attempt = 0
        while True:
            attempt += 1
            yield self.delay(attempt)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or an HTTP date), clamped to
    [0, MAX_RETRY_AFTER_S]; None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)
