"""Partition state for the unit tests of the worker's objects: fresh state, records of feature
events, and a record folded into a state as the agent folds it, minus Kafka."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from schemas.rules import load_rules
from schemas.series import DEFAULT_SERIES
from streams.alerts import AlertEngine
from streams.envelope import decode
from streams.partitions import EventsMessage, PartitionState
from streams.series import SeriesResolver
from streams.watermark import Watermark
from streams.windows import EventTimeWindows, Folded
from tests.streams.fakes import message

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
NOW = T0.timestamp() + 7200  # wall clock of the tests: idleness never moves a clock here
RULES = load_rules()


def fresh() -> PartitionState:
    """The state of a partition without a checkpoint: no lateness, no grace, never idle."""
    return PartitionState(
        EventTimeWindows(
            Watermark(lateness_s=0, idle_s=10**9), grace_s=0, series=SeriesResolver(DEFAULT_SERIES)
        ),
        AlertEngine(RULES, idle_s=10**9),
    )


def at(seconds: float) -> str:
    """T0 + `seconds`, as the ingest writes a timestamp."""
    return (T0 + timedelta(seconds=seconds)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def feature(number: int, seconds: float) -> dict[str, Any]:
    """Event `number`: the same number is the same event (a retry)."""
    return {
        "event_id": f"e{number}",
        "type": "feature",
        "feature": "f",
        "action": "x",
        "timestamp": at(seconds),
    }


def record(*events: dict[str, Any]) -> bytes:
    """An events record of project `p`."""
    return orjson.dumps({"project": "p", "events": list(events)})


def fold(state: PartitionState, offset: int, value: bytes, now: float = NOW) -> Folded:
    """What the agent does with an events record of partition 0, minus Kafka and metrics: its
    events into the windows and alert rules (their changes are dropped here), its late events into
    the outbox, the watermark moved, the record into the unacked."""
    folded, _ = state.fold(0, offset, decode(value), now)
    state.windows.due(now)
    state.passed(message(0, offset, value))
    return folded


def close(state: PartitionState) -> None:
    """Emit (and drop) the windows the watermark closed, as the timer does between records."""
    for _ in state.windows.close_ready(NOW):
        pass


def offsets(messages: list[EventsMessage]) -> list[int]:
    return [m.offset for m in messages]
