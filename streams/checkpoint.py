"""Checkpoints of the window state, so that a worker restarted after a crash resumes exactly.

For each events partition p the worker keeps its open windows; every few seconds, and right
after it emitted closed windows, it writes them, with the offset of the first record they do not
include, to partition p of a compacted topic and waits for the acknowledgement. Only then does
it acknowledge the events records to Faust, so the committed offset never passes a checkpoint.
On (re)assignment of p the worker loads the newest checkpoint of p, skips records below its
offset, and folds in the rest: every window ends up with exactly its events, once.

A crash between emitting windows and writing the next checkpoint re-emits those windows after
the restart, with the same content; their keys make that a replacement downstream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cramjam
import orjson
from kafka import KafkaConsumer, TopicPartition


@dataclass(frozen=True, slots=True)
class Checkpoint:
    next_offset: int
    state: dict[str, Any]


def encode(checkpoint: Checkpoint) -> bytes:
    payload = orjson.dumps({"v": 1, "next_offset": checkpoint.next_offset, "state": checkpoint.state})
    return bytes(cramjam.zstd.compress(payload))


def decode(value: bytes) -> Checkpoint:
    payload = orjson.loads(bytes(cramjam.zstd.decompress(value)))
    return Checkpoint(payload["next_offset"], payload["state"])


def load_latest(bootstrap: str, topic: str, partition: int, timeout_s: float = 30.0) -> Checkpoint | None:
    """The newest checkpoint of `partition`, or None when there is none. Blocks (run it in a
    thread); raises kafka-python's errors when the broker does not answer."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        max_partition_fetch_bytes=128 * 1024 * 1024,
        fetch_max_bytes=128 * 1024 * 1024,
        consumer_timeout_ms=int(timeout_s * 1000),
    )
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        end = consumer.end_offsets([tp])[tp]
        if not end:
            return None
        consumer.seek(tp, end - 1)
        for record in consumer:
            if record.offset == end - 1:
                return decode(record.value)
        raise TimeoutError(f"could not read checkpoint {topic}[{partition}]@{end - 1}")
    finally:
        consumer.close()
