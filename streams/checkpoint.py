"""Checkpoints of the window state, so that a worker restarted after a crash resumes exactly.

For each events partition p the worker keeps its open windows; every few seconds, and right
after it emitted closed windows, it writes them, with the offset of the first record they do not
include, to partition p of a compacted topic and waits for the acknowledgement. Only then does
it acknowledge the events records to Faust, so the committed offset never passes a checkpoint.
On (re)assignment of p the worker loads the newest checkpoint of p, skips records below its
offset, and folds in the rest: every window ends up with exactly its events, once.

A crash between emitting windows and writing the next checkpoint re-emits those windows after
the restart, with the same content; their keys make that a replacement downstream.

Alert state changes cannot be re-emitted that way (a second `firing` would page someone twice).
Each alert record carries the events partition it came from in a header; on (re)assignment the
worker reads the alerts topic from shortly before its checkpoints were taken and applies the
changes of its partitions, so the replay neither repeats nor forgets one (streams/alerts.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import cramjam
import orjson
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

PARTITION_HEADER = "cosnap-events-partition"


class SourceUnavailable(Exception):
    """A read of the checkpoints, events or alerts topic failed because Kafka did not answer (it
    is down or restarting): the worker reads again later (streams/checkpointing.py, Restorer)."""


@contextmanager
def _kafka_answers(what: str) -> Iterator[None]:
    """Raise SourceUnavailable for the errors of a broker that does not answer."""
    try:
        yield
    except (KafkaError, TimeoutError, OSError) as exc:
        raise SourceUnavailable(f"reading {what}: {exc!r}") from exc


@dataclass(frozen=True, slots=True)
class Checkpoint:
    next_offset: int
    state: dict[str, Any]


def encode(checkpoint: Checkpoint) -> bytes:
    """zstd JSON of the state, which may hold dataclasses (the live window accumulators,
    written by orjson without a Python object per window), int keys and Decimals."""
    payload = orjson.dumps(
        {"v": 2, "next_offset": checkpoint.next_offset, "state": checkpoint.state},
        option=orjson.OPT_NON_STR_KEYS,
        default=_decimal,
    )
    return bytes(cramjam.zstd.compress(payload))


def _decimal(value: object) -> str:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"a checkpoint cannot hold {type(value).__name__}")


def decode(value: bytes) -> Checkpoint:
    payload = orjson.loads(bytes(cramjam.zstd.decompress(value)))
    return Checkpoint(payload["next_offset"], payload["state"])


def load_latest(
    bootstrap: str, topic: str, partitions: list[int], timeout_s: float = 30.0
) -> dict[int, Checkpoint]:
    """The newest checkpoint of each of `partitions` that has one, read with one consumer. Blocks
    (run it in a thread); raises kafka-python's errors when the broker does not answer."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        max_partition_fetch_bytes=128 * 1024 * 1024,
        fetch_max_bytes=128 * 1024 * 1024,
        consumer_timeout_ms=int(timeout_s * 1000),
    )
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        ends = {tp: end for tp, end in consumer.end_offsets(tps).items() if end}
        if not ends:
            return {}
        consumer.assign(list(ends))
        for tp, end in ends.items():
            consumer.seek(tp, end - 1)
        found: dict[int, Checkpoint] = {}
        for record in consumer:
            if record.offset == ends[TopicPartition(record.topic, record.partition)] - 1:
                found[record.partition] = decode(record.value)
                if len(found) == len(ends):
                    return found
        raise TimeoutError(f"read {len(found)} of {len(ends)} checkpoints of {topic}")
    finally:
        consumer.close()


def read_records(
    bootstrap: str, topic: str, partition: int, start: int, end: int, timeout_s: float = 60.0
) -> list[tuple[int, bytes]]:
    """(offset, value) of the records of `topic`[`partition`] from offset `start` up to `end`
    (excluded), or from the oldest one kept when retention removed `start`. Blocks (run it in a
    thread); raises TimeoutError when they cannot be read in time."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, max_partition_fetch_bytes=8 * 1024 * 1024
    )
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, max(start, consumer.beginning_offsets([tp])[tp]))
        out: list[tuple[int, bytes]] = []
        deadline = time.monotonic() + timeout_s
        while consumer.position(tp) < end:
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topic}[{partition}] up to {end} within {timeout_s}s")
            for records in consumer.poll(timeout_ms=500).values():
                out.extend((r.offset, r.value) for r in records if r.offset < end)
        return out
    finally:
        consumer.close()


def read_published_alerts(
    bootstrap: str, topic: str, partitions: set[int], since: float | None, timeout_s: float = 30.0
) -> dict[int, list[dict[str, Any]]]:
    """The alert records published for `partitions` (events partitions) since wall time `since`
    (epoch seconds; None: the whole topic), in the order they were written, read up to the end
    offsets of the moment of the call. Blocks (run it in a thread)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        ends = consumer.end_offsets(tps)
        if since is None:
            consumer.seek_to_beginning(*tps)
        else:
            starts = consumer.offsets_for_times({tp: int(since * 1000) for tp in tps})
            for tp in tps:
                found = starts.get(tp)
                consumer.seek(tp, ends[tp] if found is None else found.offset)
        out: dict[int, list[dict[str, Any]]] = {}
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topic} to its end within {timeout_s}s")
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    if record.offset >= ends[TopicPartition(record.topic, record.partition)]:
                        continue
                    headers = dict(record.headers or ())
                    partition = int(headers.get(PARTITION_HEADER, b"-1"))
                    if partition in partitions:
                        out.setdefault(partition, []).append(orjson.loads(record.value))
        return out
    finally:
        consumer.close()


@dataclass(frozen=True, slots=True)
class KafkaCheckpoints:
    """Where the worker restores partitions from (streams/checkpointing.py, CheckpointSource):
    the reads above, on the topics of one deployment. Each call blocks, and raises
    SourceUnavailable when Kafka does not answer."""

    bootstrap: str
    checkpoints_topic: str
    events_topic: str
    alerts_topic: str
    panes_topic: str = ""

    def latest(self, partitions: list[int]) -> dict[int, Checkpoint]:
        with _kafka_answers(self.checkpoints_topic):
            return load_latest(self.bootstrap, self.checkpoints_topic, partitions)

    def records(self, partition: int, start: int, end: int) -> list[tuple[int, bytes]]:
        with _kafka_answers(self.events_topic):
            return read_records(self.bootstrap, self.events_topic, partition, start, end)

    def published_alerts(self, partitions: set[int], since: float | None) -> dict[int, list[dict[str, Any]]]:
        with _kafka_answers(self.alerts_topic):
            return read_published_alerts(self.bootstrap, self.alerts_topic, partitions, since)

    def panes(self, end: int) -> list[tuple[int, bytes]]:
        """(offset, value) of the records of the panes topic (one partition) below `end`."""
        with _kafka_answers(self.panes_topic):
            return read_records(self.bootstrap, self.panes_topic, 0, 0, end)
