"""Kafka records to ClickHouse rows (JSONEachRow lines) for the tables of docs/reference.md,
"ClickHouse tables"."""

from __future__ import annotations

from typing import Any

import msgspec
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

ALERT_DELIVERY_COLUMNS = [
    "fingerprint", "rule", "project", "state", "starts_at", "target", "outcome", "tries", "seconds", "error",
    "finished_at",
]  # fmt: skip

ALERT_ACK_COLUMNS = ["fingerprint", "starts_at", "rule", "project", "noise", "note", "acked_at"]

TRAIT_COLUMNS = [
    "message_id", "project", "type", "timestamp", "received_at", "user_id", "anonymous_id", "group_id",
    "previous_id", "traits", "context", "request_id", "kafka_partition", "kafka_offset",
]  # fmt: skip


class _Envelope(msgspec.Struct):
    """An events record as the sink reads it: its project, and each event's JSON as written."""

    project: str
    events: list[msgspec.Raw]


_decode_envelope = msgspec.json.Decoder(_Envelope).decode


def event_rows(value: bytes, partition: int, offset: int) -> list[bytes]:
    """One row per event of an envelope record: the event's JSON as the ingest wrote it, with the
    project and the record's partition and offset written in before its closing brace. No event
    is decoded or encoded again (a fifth of the time; BENCHMARKS.md, Sink); an event never holds
    those three fields (tests/schemas/test_event_types.py), and if one did, ClickHouse would
    refuse the row for its duplicate key and the sink dead-letter it. Raises TypeError for a
    record that is not an envelope of JSON objects."""
    try:
        envelope = _decode_envelope(value)
    except msgspec.DecodeError as exc:  # not JSON, or not {"project": str, "events": [...]}
        raise TypeError(f"not an events envelope: {exc}") from exc
    tail = b',"project":%b,"kafka_partition":%d,"kafka_offset":%d}' % (
        orjson.dumps(envelope.project),
        partition,
        offset,
    )
    rows = []
    for event in envelope.events:
        raw = bytes(event)
        if raw[:1] != b"{":
            raise TypeError(f"an event of the envelope is not a JSON object: {raw[:100]!r}")
        rows.append(raw[:-1] + tail if raw != b"{}" else b"{" + tail[1:])
    return rows


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


def record_row(value: bytes, partition: int, offset: int) -> list[bytes]:
    """The record itself as the row, for records whose fields are the table's columns (alert
    deliveries and acknowledgements); `v` is skipped as an unknown field. Raises TypeError for a
    value that is not a JSON object."""
    del partition, offset
    if not isinstance(orjson.loads(value), dict):
        raise TypeError(f"not a JSON object: {value[:100]!r}")
    return [value]


def trait_rows(value: bytes, partition: int, offset: int) -> list[bytes]:
    """One row per identify, group or alias call of a traits record."""
    record: dict[str, Any] = orjson.loads(value)
    shared = {"project": record["project"], "kafka_partition": partition, "kafka_offset": offset}
    return [orjson.dumps(message | shared) for message in record["messages"]]
