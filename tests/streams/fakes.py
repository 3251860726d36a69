"""Kafka's side of the streams worker's objects, in memory: producers that acknowledge, refuse or
hold records on demand, and a checkpoint source that answers from what the test gives it.

The unit tests of the worker's objects (publishing, checkpointing, emission, folding) run on
these; that Kafka behaves as they pretend is proven end to end on a real broker (the tests
marked `kafka`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiokafka.errors import KafkaError
from faust.types import Message

from plumbing.backoff import Backoff
from plumbing.kafka import KafkaUnavailable
from streams.checkpoint import Checkpoint

# Retries of the tests wait a millisecond or two, not the worker's 0.1 s and up.
QUICK = Backoff(initial=0.001, cap=0.002)


@dataclass(frozen=True, slots=True)
class Sent:
    """One record given to a FakeSender."""

    topic: str
    key: bytes
    value: bytes
    partition: int | None
    headers: tuple[tuple[str, bytes], ...]


class FakeSender:
    """A RecordSender (Faust's producer) in memory. Acknowledges each record, or refuses the
    next `refusals` ones (their acks raise aiokafka's KafkaError, as Faust's do); while
    `holding`, acks wait for `release()`."""

    def __init__(self) -> None:
        self.acknowledged: list[Sent] = []
        self.refused: list[Sent] = []
        self.refusals = 0
        self.holding = False
        self._held: list[tuple[asyncio.Future[None], Sent]] = []

    async def send(
        self,
        topic: str,
        key: bytes,
        value: bytes,
        *,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[None]:
        record = Sent(topic, key, value, partition, tuple(headers or []))
        acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.holding:
            self._held.append((acked, record))
        else:
            self._settle(acked, record)
        return acked

    def release(self) -> None:
        """Settle the records held so far, and those sent from now on as they come."""
        self.holding = False
        held, self._held = self._held, []
        for acked, record in held:
            self._settle(acked, record)

    @property
    def held(self) -> list[Sent]:
        return [record for _, record in self._held]

    def on(self, topic: str) -> list[Sent]:
        """The records of `topic` Kafka acknowledged, in order."""
        return [record for record in self.acknowledged if record.topic == topic]

    def _settle(self, acked: asyncio.Future[None], record: Sent) -> None:
        if self.refusals:
            self.refusals -= 1
            self.refused.append(record)
            acked.set_exception(KafkaError("the broker refused the record"))
            acked.exception()  # retrieved: a publisher gathering acks stops at the first failure
        else:
            self.acknowledged.append(record)
            acked.set_result(None)


Records = list[tuple[bytes, bytes]]


class FakeBatchProducer:
    """A BatchProducer (AckedProducer) in memory. Settles each batch on the next turn of the
    event loop, refusing the next `refusals` batches with KafkaUnavailable as AckedProducer does
    and acknowledging the others; while `holding`, acks wait for `release()`. Keeps every batch
    produced (re-sends too) and the most records it had queued and unsettled at once."""

    def __init__(self) -> None:
        self.produced: list[Records] = []
        self.acknowledged: list[Records] = []
        self.refusals = 0
        self.holding = False
        self.in_flight = 0
        self.most_in_flight = 0
        self._held: list[tuple[asyncio.Future[None], Records]] = []

    def produce_all(self, topic: str, records: Records, acked: asyncio.Future[None]) -> None:
        self.produced.append(records)
        self.in_flight += len(records)
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        if self.holding:
            self._held.append((acked, records))
        else:
            acked.get_loop().call_soon(self._settle, acked, records)

    def release(self) -> None:
        self.holding = False
        held, self._held = self._held, []
        for acked, records in held:
            self._settle(acked, records)

    def _settle(self, acked: asyncio.Future[None], records: Records) -> None:
        self.in_flight -= len(records)
        if self.refusals:
            self.refusals -= 1
            acked.set_exception(KafkaUnavailable("Kafka did not acknowledge the records: timed out"))
        else:
            self.acknowledged.append(records)
            acked.set_result(None)


@dataclass
class FakeCheckpoints:
    """A CheckpointSource answering from memory: the newest checkpoint of each partition, the
    events records of each partition by offset, and the alert records published per partition.
    Keeps the calls it answered."""

    checkpoints: dict[int, Checkpoint] = field(default_factory=dict)
    events: dict[int, dict[int, bytes]] = field(default_factory=dict)
    alerts: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    calls: list[tuple[str, Any]] = field(default_factory=list)

    def latest(self, partitions: list[int]) -> dict[int, Checkpoint]:
        self.calls.append(("latest", partitions))
        return {p: self.checkpoints[p] for p in partitions if p in self.checkpoints}

    def records(self, partition: int, start: int, end: int) -> list[tuple[int, bytes]]:
        self.calls.append(("records", (partition, start, end)))
        return sorted((o, v) for o, v in self.events.get(partition, {}).items() if start <= o < end)

    def published_alerts(self, partitions: set[int], since: float | None) -> dict[int, list[dict[str, Any]]]:
        self.calls.append(("published_alerts", (partitions, since)))
        return {p: records for p, records in self.alerts.items() if p in partitions}


def message(partition: int, offset: int, value: bytes, topic: str = "events") -> Message:
    """A Faust message of the events topic, as the agent receives it."""
    return Message(topic, partition, offset, 0.0, 0, [], b"project", value, None)
