"""Per-key rate limits: a token bucket of events per write key, in each ingest process."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """`take` is called once per request with the number of events it carries; it never blocks.
    A rate of 0 turns the limit off."""

    def __init__(self, events_per_s: float, burst: float) -> None:
        self._rate = events_per_s
        self._burst = max(burst, events_per_s)
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key_id: str, events: int, now: float | None = None) -> float:
        """Spend `events` tokens of `key_id`. Returns 0 when allowed, else the seconds to wait
        before the same request would be (the Retry-After)."""
        if self._rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(key_id)
        if bucket is None:
            bucket = self._buckets[key_id] = _Bucket(self._burst, now)
        bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.updated) * self._rate)
        bucket.updated = now
        cost = min(events, self._burst)  # a batch larger than the burst waits for a full bucket
        if bucket.tokens >= cost:
            bucket.tokens -= cost
            return 0.0
        return max(1.0, math.ceil((cost - bucket.tokens) / self._rate))
