"""Envelopes for the streams benchmarks, built and written exactly as the ingest API writes them.

Each event goes through the ingest's own `parse_events` (validation, server fields, millisecond
UTC timestamps), 500 of one project are joined into an envelope `{"v":1,"project":...,"events":
[...]}` and written keyed by the project with confluent-kafka, lz4, acks=all, idempotent.
"""

from __future__ import annotations

import random
import uuid
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from confluent_kafka import KafkaError, Message, Producer

from cosnap_metrics.demo import CosnapTraffic
from ingest.batch import ParsedBatch, TimePolicy, parse_events
from schemas.topics import EVENT_PARTITIONS, MAX_RECORD_BYTES

EVENTS_PER_ENVELOPE = 500
INGEST_POLICY = TimePolicy(max_future_skew=timedelta(minutes=10), max_event_age=timedelta(days=30))
# The closer is hours ahead of the data: the ingest would refuse it, the worker takes it as given.
CLOSER_POLICY = TimePolicy(max_future_skew=timedelta(days=1), max_event_age=timedelta(days=30))

Envelope = tuple[str, bytes]  # (Kafka key: the project, or project|type|name; record value)


def choose_projects(count: int, partitions: int = EVENT_PARTITIONS) -> list[str]:
    """`count` project names that librdkafka's default partitioner (CRC32 of the key) spreads
    over distinct partitions while there are partitions left, so every partition has work."""
    chosen: list[str] = []
    taken: set[int] = set()
    n = 0
    while len(chosen) < count:
        name = f"cosnap-{n}"
        partition = zlib.crc32(name.encode()) % partitions
        if partition not in taken or len(taken) == partitions:
            chosen.append(name)
            taken.add(partition)
        n += 1
    return chosen


def envelope_value(project: str, events: list[bytes]) -> bytes:
    """The record value ingest/envelopes.py writes for these events (each one JSON object)."""
    return b"".join([b'{"v":1,"project":', orjson.dumps(project), b',"events":[', b",".join(events), b"]}"])


def wire_events(items: list[dict[str, Any]], received_at: datetime, policy: TimePolicy) -> list[bytes]:
    """The events as the ingest writes them; every item must be accepted."""
    return _parsed(items, received_at, policy).accepted


def _parsed(items: list[dict[str, Any]], received_at: datetime, policy: TimePolicy) -> ParsedBatch:
    batch = parse_events(items, None, received_at, uuid.uuid4().hex, policy)
    if batch.rejected:
        raise AssertionError(f"the ingest would reject {batch.rejected[0]}")
    return batch


def _iso(ts: datetime) -> str:
    return ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def pack(
    timed: Iterable[tuple[str, datetime, dict[str, Any]]],
    policy: TimePolicy = INGEST_POLICY,
    *,
    by_series: bool = False,
) -> Iterator[Envelope]:
    """Envelopes of EVENTS_PER_ENVELOPE events per project from (project, time, event) in time
    order; each envelope is received 200 ms after its newest event. Remainders come last.
    `by_series`: each such batch is split by series key as the ingest splits a request under
    `COSNAP_EVENTS_KEY=series`, one envelope per key (keyed `project|type|name`)."""
    open_: dict[str, list[dict[str, Any]]] = {}
    for project, ts, event in timed:
        event["timestamp"] = _iso(ts)
        items = open_.setdefault(project, [])
        items.append(event)
        if len(items) == EVENTS_PER_ENVELOPE:
            yield from _envelopes(project, items, ts + timedelta(milliseconds=200), policy, by_series)
            del open_[project]
    for project, items in open_.items():
        newest = datetime.fromisoformat(items[-1]["timestamp"])
        yield from _envelopes(project, items, newest + timedelta(milliseconds=200), policy, by_series)


def _envelopes(
    project: str, items: list[dict[str, Any]], received_at: datetime, policy: TimePolicy, by_series: bool
) -> Iterator[Envelope]:
    batch = _parsed(items, received_at, policy)
    if not by_series:
        yield project, envelope_value(project, batch.accepted)
        return
    by_key: dict[str, list[bytes]] = {}
    for name, event in zip(batch.names, batch.accepted, strict=True):
        by_key.setdefault(f"{project}|{name}", []).append(event)
    for key, events in by_key.items():
        yield key, envelope_value(project, events)


def cosnap_mix(
    total: int, projects: list[str], start: datetime, span: timedelta, seed: int = 7
) -> Iterator[tuple[str, datetime, dict[str, Any]]]:
    """`total` events of the demo's Cosnap traffic (~50 % performance, 30 % feature, 17 %
    conversion, 3 % revenue), projects drawn at random, times evenly increasing over `span`."""
    rng = random.Random(seed)
    traffic = CosnapTraffic(rng=rng)
    step = span / total
    for i in range(total):
        yield rng.choice(projects), start + step * i, traffic.event()


def closers(projects: list[str], at: datetime) -> list[Envelope]:
    """One single-event envelope per project at event time `at`: it pushes the project's
    partition watermark past every window of the data before it."""
    out = []
    for project in projects:
        event = {
            "event_id": uuid.uuid4().hex,
            "timestamp": _iso(at),
            "type": "feature",
            "feature": "bench.closer",
            "action": "closed",
        }
        out.append((project, envelope_value(project, wire_events([event], at, CLOSER_POLICY))))
    return out


@dataclass
class Written:
    records: int
    bytes: int
    partitions: Counter[int]


def produce(bootstrap: str, topic: str, envelopes: Iterable[Envelope]) -> Written:
    """Write the envelopes (under their keys) and wait for every acknowledgement; raises on a failed
    delivery."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "client.id": "bench-streams-feed",
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            "compression.type": "lz4",
            "message.max.bytes": MAX_RECORD_BYTES,
        }
    )
    partitions: Counter[int] = Counter()
    errors: list[KafkaError | None] = []

    def delivered(error: KafkaError | None, message: Message) -> None:
        partition = message.partition()
        if error is not None or partition is None:
            errors.append(error)
        else:
            partitions[partition] += 1

    written = size = 0
    for project, value in envelopes:
        while True:
            try:
                producer.produce(topic, key=project.encode(), value=value, on_delivery=delivered)
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                producer.poll(0.1)
        producer.poll(0)
        written += 1
        size += len(value)
    if producer.flush(60) or errors:
        raise AssertionError(f"{len(errors)} envelopes not delivered: {errors[:3]}")
    return Written(written, size, partitions)
