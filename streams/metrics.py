"""Prometheus metrics and `/health` of the streams worker, served on its status endpoint
(plumbing/status.py; Faust's own web server stays off).

`partition` is an events partition (6 by default), `granularity` one of 10s/1m/1h, `rule` a
rule of the rules file, `type` an event type: every label is bounded by configuration, never by
traffic.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from functools import cache
from typing import Any

from faust.types import TP
from prometheus_client import Counter, Gauge, Histogram

from plumbing.outage import Outage
from schemas.health import ServiceHealth

EVENTS_FOLDED = Counter(
    "cosnap_streams_events_folded_total", "Events folded into windows, by events partition", ["partition"]
)
LATE_EVENTS = Counter(
    "cosnap_streams_late_events_total",
    "Events whose 10 s window had closed, by project: counted by correction rows, in no alert rule",
    ["project"],
)
DUPLICATE_EVENTS = Counter(
    "cosnap_streams_duplicate_events_total",
    "Copies of an event already counted (same project and event_id): skipped, by project",
    ["project"],
)
REFUSED_EVENTS = Counter(
    "cosnap_streams_refused_events_total",
    "Events of records written past the ingest that no window could hold: dead-lettered",
)
WINDOWS_EMITTED = Counter(
    "cosnap_streams_windows_emitted_total",
    "Final windows acknowledged on the aggregates topic, by granularity",
    ["granularity"],
)
ALERT_TRANSITIONS = Counter(
    "cosnap_streams_alert_transitions_total",
    "Alert state changes acknowledged on the alerts topic, by rule and state",
    ["rule", "state"],
)
OVERFLOW_EVENTS = Counter(
    "cosnap_streams_overflow_events_total",
    "Events of names beyond their project's cap per type (COSNAP_MAX_NAMES_PER_TYPE), counted under "
    "__overflow__, by event type",
    ["type"],
)
for _kind in ("revenue", "conversion", "feature", "performance"):
    OVERFLOW_EVENTS.labels(_kind)  # present at 0 before the first overflow
CHECKPOINT_SECONDS = Histogram(
    "cosnap_streams_checkpoint_duration_seconds",
    "Time to snapshot a partition's windows and have Kafka acknowledge the checkpoint",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
CONSUMER_LAG = Gauge(
    "cosnap_streams_consumer_lag_records",
    "Records of an owned events partition not folded in yet (highwater minus next offset)",
    ["partition"],
)


@cache
def events_folded(partition: int) -> Counter:
    """The partition's child of EVENTS_FOLDED, looked up once (the agent counts every record)."""
    return EVENTS_FOLDED.labels(str(partition))


def count_windows(granularity: str, count: int) -> None:
    WINDOWS_EMITTED.labels(granularity).inc(count)


def count_overflow(counts: Mapping[str, int]) -> None:
    """Count the events a resolver put under `__overflow__` (SeriesResolver.take_overflow)."""
    for kind, count in counts.items():
        OVERFLOW_EVENTS.labels(kind).inc(count)


def count_transitions(changes: list[dict[str, Any]]) -> None:
    for change in changes:
        ALERT_TRANSITIONS.labels(change["rule"], change["state"]).inc()


class WorkerStatus:
    """What the worker's /health and lag gauges report. `ticked` and `forget` run on the event
    loop; `health` on the status server's threads, reading only what `ticked` replaces whole."""

    def __init__(self, tick_s: float, kafka: Outage | None = None) -> None:
        self._stalled_after = max(10.0, 20 * tick_s)
        self._kafka = kafka
        self._ticked_at: float | None = None
        self._lag: dict[int, int] = {}

    def ticked(self, consumer: Any, topic: str, next_offsets: Mapping[int, int]) -> None:
        """Called at every tick of the timer with the next offset to fold of each partition held."""
        assigned = consumer.assignment()
        lag = {}
        for partition, next_offset in next_offsets.items():
            tp = TP(topic, partition)
            if tp not in assigned:
                continue
            try:
                highwater = consumer.highwater(tp)
            except AssertionError:  # aiokafka asserts assignment: revoked since `assigned` was read
                continue
            if highwater is not None:  # known once the partition has been fetched from
                lag[partition] = max(highwater - next_offset, 0)
                CONSUMER_LAG.labels(str(partition)).set(lag[partition])
        self._lag, self._ticked_at = lag, time.monotonic()

    def forget(self, partition: int) -> None:
        """The partition was revoked: its lag is the new owner's to report."""
        CONSUMER_LAG.remove(str(partition))

    def health(self) -> ServiceHealth:
        """Unhealthy before the first tick and when the timer stops ticking (the event loop is
        stuck, so windows are not closed); degraded while Kafka is unreachable (the problem says
        since when); healthy otherwise."""
        if self._ticked_at is None:
            return ServiceHealth(service="streams", status="unhealthy", problems=["starting: no tick yet"])
        since = time.monotonic() - self._ticked_at
        stalled = since > self._stalled_after
        problems = [f"the timer last ticked {since:.0f}s ago"] if stalled else []
        kafka = self._kafka.problem() if self._kafka is not None else None
        if kafka is not None:
            problems.append(kafka)
        return ServiceHealth(
            service="streams",
            status="unhealthy" if stalled else "degraded" if problems else "healthy",
            problems=problems,
            details={"seconds_since_tick": round(since, 3), "lag": {str(p): n for p, n in self._lag.items()}},
        )
