"""Kafka records to ClickHouse rows (JSONEachRow lines) for the tables of docs/reference.md,
"ClickHouse tables"."""

from __future__ import annotations

from typing import Any

import orjson

from schemas.event_types import EVENT_KINDS

# The fields every event has, then those of each type (as the table of event types lists them:
# revenue's name, amount and currency, ...), then where it came from.
EVENT_COLUMNS = [
    "event_id", "project", "type", "timestamp", "received_at", "user_id", "anonymous_id", "session_id",
    "source", "environment", "release",
    *dict.fromkeys(field for kind in EVENT_KINDS.values() for field in kind.fields),
    "tags", "request_id", "kafka_partition", "kafka_offset",
]  # fmt: skip

AGGREGATE_COLUMNS = [
    "project", "type", "name", "currency", "dims", "series_id", "granularity", "window_start", "window_end",
    "count", "sum", "min", "max", "mean", "p50", "p90", "p95", "p99", "sketch_positive", "sketch_negative",
    "sketch_zeros", "step_index", "ratio_to_previous", "emitted_at",
]  # fmt: skip

ALERT_COLUMNS = [
    "fingerprint", "rule", "state", "severity", "project", "labels", "annotations", "value", "threshold",
    "starts_at", "ends_at", "evaluated_at", "emitted_at",
]  # fmt: skip

TRAIT_COLUMNS = [
    "message_id", "project", "type", "timestamp", "received_at", "user_id", "anonymous_id", "group_id",
    "previous_id", "traits", "context", "request_id", "kafka_partition", "kafka_offset",
]  # fmt: skip


def event_rows(value: bytes, partition: int, offset: int) -> list[bytes]:
    """One row per event of an envelope record."""
    envelope: dict[str, Any] = orjson.loads(value)
    shared = {"project": envelope["project"], "kafka_partition": partition, "kafka_offset": offset}
    return [orjson.dumps(event | shared) for event in envelope["events"]]


def aggregate_rows(value: bytes, partition: int, offset: int) -> list[bytes]:
    """One row per final window record; the sketch is spread over its three columns."""
    del partition, offset
    window: dict[str, Any] = orjson.loads(value)
    sketch = window.pop("sketch", None)
    if sketch is not None:
        window["sketch_positive"] = sketch["positive"]
        window["sketch_negative"] = sketch["negative"]
        window["sketch_zeros"] = sketch["zeros"]
    return [orjson.dumps(window)]


def alert_rows(value: bytes, partition: int, offset: int) -> list[bytes]:
    """One row per alert state change; the project is lifted out of the labels."""
    del partition, offset
    alert: dict[str, Any] = orjson.loads(value)
    alert["project"] = alert["labels"]["project"]
    return [orjson.dumps(alert)]


def trait_rows(value: bytes, partition: int, offset: int) -> list[bytes]:
    """One row per identify, group or alias call of a traits record."""
    record: dict[str, Any] = orjson.loads(value)
    shared = {"project": record["project"], "kafka_partition": partition, "kafka_offset": offset}
    return [orjson.dumps(message | shared) for message in record["messages"]]
