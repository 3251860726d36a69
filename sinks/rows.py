"""Kafka records to ClickHouse rows (JSONEachRow lines) for the tables of DESIGN §3.4."""

from __future__ import annotations

from typing import Any

import orjson

EVENT_COLUMNS = [
    "event_id", "project", "type", "timestamp", "received_at", "user_id", "anonymous_id", "session_id",
    "source", "environment", "release", "name", "amount", "currency", "funnel", "step", "step_index",
    "feature", "action", "metric", "value", "unit", "tags", "request_id", "kafka_partition", "kafka_offset",
]  # fmt: skip

AGGREGATE_COLUMNS = [
    "project", "type", "name", "currency", "dims", "series_id", "granularity", "window_start", "window_end",
    "count", "sum", "min", "max", "emitted_at",
]  # fmt: skip


def event_rows(value: bytes, partition: int, offset: int) -> list[bytes]:
    """One row per event of an envelope record."""
    envelope: dict[str, Any] = orjson.loads(value)
    shared = {"project": envelope["project"], "kafka_partition": partition, "kafka_offset": offset}
    return [orjson.dumps(event | shared) for event in envelope["events"]]


def aggregate_rows(value: bytes, partition: int, offset: int) -> list[bytes]:
    """One row per final window record (already in row shape)."""
    del partition, offset
    orjson.loads(value)  # refuse undecodable records here, not in the middle of a batch insert
    return [value]
