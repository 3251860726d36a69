"""Event-time watermark over the partitions a worker owns.

Per partition the clock is the highest event time seen; once a partition has been idle for
`idle_s` of wall time, its clock moves on with the wall clock from there (so the last window
of a quiet stream still closes). The worker's watermark is the slowest partition clock minus
the allowed lateness, and it never goes back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class _PartitionClock:
    max_event_time: float
    last_arrival: float


class Watermark:
    def __init__(self, lateness_s: float, idle_s: float) -> None:
        self._lateness = lateness_s
        self._idle = idle_s
        self._clocks: dict[int, _PartitionClock] = {}
        self._current = float("-inf")

    @property
    def current(self) -> float:
        """Event time (epoch seconds) up to which the stream is taken as complete."""
        return self._current

    def observe(self, partition: int, event_time: float, now: float) -> None:
        """Record an event time seen on `partition` at wall time `now` (both epoch seconds)."""
        clock = self._clocks.get(partition)
        if clock is None:
            self._clocks[partition] = _PartitionClock(event_time, now)
            return
        clock.last_arrival = now
        if event_time > clock.max_event_time:
            clock.max_event_time = event_time

    def forget(self, partition: int) -> None:
        """Drop a partition this worker no longer owns (after a rebalance)."""
        self._clocks.pop(partition, None)

    def to_state(self) -> dict[str, Any]:
        """What a checkpoint keeps: the current watermark and each partition's clock."""
        current = None if self._current == float("-inf") else self._current
        return {"current": current, "clocks": {str(p): c.max_event_time for p, c in self._clocks.items()}}

    def restore(self, state: dict[str, Any], now: float) -> None:
        """Resume from `to_state()`. Arrival times restart at `now`: a restarted worker does not
        count its own downtime as idleness of the stream."""
        self._current = float("-inf") if state["current"] is None else float(state["current"])
        self._clocks = {int(p): _PartitionClock(float(t), now) for p, t in state["clocks"].items()}

    def advance(self, now: float) -> float:
        """Recompute the watermark at wall time `now` and return it."""
        if not self._clocks:
            return self._current
        slowest = min(
            clock.max_event_time
            + (now - clock.last_arrival if now - clock.last_arrival >= self._idle else 0.0)
            for clock in self._clocks.values()
        )
        self._current = max(self._current, slowest - self._lateness)
        return self._current
