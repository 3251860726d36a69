"""What the worker writes to Kafka besides checkpoints: alert state changes, closed windows and
late records, each sent until Kafka has acknowledged it.

Alert changes and closed windows have already left the state they came from (the alert engine
moved on, the windows were popped), and the next checkpoint will not hold them: a record Kafka
refused is sent again, after a backoff, until it is taken. A record sent twice is the same
record, which consumers and the tables collapse. Late records are held by the checkpoint that
covers their events record until Kafka has them, so a refused batch of those simply waits for
the next checkpoint.

The producers are passed in: `RecordSender` queues one record at a time (Faust's producer, which
the worker uses for everything but windows), `BatchProducer` queues many with one future
(plumbing.kafka.AckedProducer, for the windows).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Iterable
from typing import Any, Protocol

import orjson
from aiokafka.errors import KafkaError

from plumbing.backoff import Backoff
from plumbing.kafka import KafkaUnavailable
from streams.checkpoint import PARTITION_HEADER
from streams.metrics import count_transitions, count_windows
from streams.partitions import Partitions
from streams.windows import ClosedWindows

log = logging.getLogger("cosnap.streams")
MAX_WINDOWS_IN_FLIGHT = 50_000  # window records sent and not yet acknowledged (~25 MB)

# What a RecordSender raises, on `send` or on the awaitable it returned, when Kafka did not take
# a record: aiokafka's errors, and its timeouts.
SEND_ERRORS = (KafkaError, TimeoutError)


class RecordSender(Protocol):
    async def send(
        self,
        topic: str,
        key: bytes,
        value: bytes,
        *,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Awaitable[object]:
        """Queue one record; the awaitable returned resolves once Kafka acknowledged it, and
        raises one of SEND_ERRORS when it did not."""
        ...


class BatchProducer(Protocol):
    def produce_all(
        self, topic: str, records: list[tuple[bytes, bytes]], acked: asyncio.Future[None]
    ) -> None:
        """Queue (key, value) records; `acked` resolves once Kafka acknowledged all of them, or
        fails with KafkaUnavailable. Never blocks."""
        ...


class AlertPublisher:
    """Sends the alert state changes of an events partition to the alerts topic, each with the
    partition in a header (read back on a restart, streams/checkpoint.py)."""

    def __init__(self, sender: RecordSender, topic: str, backoff: Backoff | None = None) -> None:
        self._sender = sender
        self._topic = topic
        self._backoff = backoff or Backoff()

    async def publish(self, partition: int, changes: list[dict[str, Any]]) -> None:
        """Send `changes` in order and return once Kafka has them all, then count and log them.
        The engine's state has already changed, so they must go out: a failure is retried until
        Kafka takes them (the caller's partition waits meanwhile)."""
        header = [(PARTITION_HEADER, str(partition).encode())]
        records = [(change["fingerprint"].encode(), orjson.dumps(change)) for change in changes]
        await _until_taken(self._sender, self._backoff, self._topic, records, header, "alert changes")
        count_transitions(changes)
        for change in changes:
            log.info("alert %s %s %s", change["rule"], change["state"], change["labels"])


class PanePublisher:
    """Sends an events partition's part of the panes of the alert rules spanning partitions
    (streams/alerts.py, `take_partials`) to the panes topic, for the stage that merges them
    (streams/merging.py)."""

    def __init__(self, sender: RecordSender, topic: str, backoff: Backoff | None = None) -> None:
        self._sender = sender
        self._topic = topic
        self._backoff = backoff or Backoff()

    async def send_parts(self, partitions: Partitions, now: float) -> None:
        """Send the part of each partition in `partitions` whose spanning panes changed or whose
        clock moved (`AlertEngine.take_partials` at wall time `now`), each under its lock."""
        for partition, state in partitions.items():
            async with state.lock:
                part = state.alerts.take_partials(now)
                if part is not None:
                    await self.publish(partition, state.next_offset, part)

    async def publish(self, partition: int, offset: int, part: dict[str, Any]) -> None:
        """Send the part of events partition `partition` folded up to `offset` (excluded) and
        return once Kafka has it. The engine no longer holds those panes as changed, and the
        next checkpoint covers them: a failure is retried until Kafka takes it."""
        value = orjson.dumps(
            {"v": 1, "source": partition, "offset": offset, **part}, option=orjson.OPT_NON_STR_KEYS
        )
        await _until_taken(
            self._sender, self._backoff, self._topic, [(str(partition).encode(), value)], [], "panes"
        )


async def _until_taken(
    sender: RecordSender,
    backoff: Backoff,
    topic: str,
    records: list[tuple[bytes, bytes]],
    headers: list[tuple[str, bytes]],
    what: str,
) -> None:
    """Send (key, value) `records` in order, again after a backoff until Kafka has them all."""
    for delay in backoff.delays():
        try:
            acks = [await sender.send(topic, key, value, headers=headers) for key, value in records]
            await asyncio.gather(*acks)
            return
        except SEND_ERRORS as exc:
            log.warning("%d records of %s not published; retry in %.1fs: %r", len(records), what, delay, exc)
            await asyncio.sleep(delay)


class WindowPublisher:
    """Sends closed windows to the aggregates topic and waits until Kafka has every one."""

    def __init__(
        self,
        producer: BatchProducer,
        topic: str,
        backoff: Backoff | None = None,
        max_in_flight: int = MAX_WINDOWS_IN_FLIGHT,
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._backoff = backoff or Backoff()
        self._max_in_flight = max_in_flight

    async def publish(self, batches: Iterable[ClosedWindows]) -> None:
        """Send every batch and return once Kafka acknowledged them all, counting each batch as
        its ack comes. Batches go out before their acks are awaited (one round trip rather than
        one per batch), with at most `max_in_flight` records sent and unacknowledged at a time:
        `batches` is consumed only as far as that allows."""
        sent: list[tuple[asyncio.Future[None], ClosedWindows]] = []
        in_flight = 0
        for closed in batches:
            sent.append((self._send(closed), closed))
            in_flight += len(closed.records)
            if in_flight >= self._max_in_flight:
                await self._acknowledged(sent)
                in_flight = 0
        await self._acknowledged(sent)

    def _send(self, closed: ClosedWindows) -> asyncio.Future[None]:
        acked = asyncio.get_running_loop().create_future()
        self._producer.produce_all(self._topic, closed.records, acked)
        return acked

    async def _acknowledged(self, sent: list[tuple[asyncio.Future[None], ClosedWindows]]) -> None:
        """Wait for the acks of `sent` in order, sending a refused batch again until Kafka takes
        it, and count each; `sent` is empty afterwards."""
        for acked, closed in sent:
            await self._until_acknowledged(acked, closed)
            count_windows(closed.granularity, len(closed.records))
        sent.clear()

    async def _until_acknowledged(self, acked: asyncio.Future[None], closed: ClosedWindows) -> None:
        for delay in self._backoff.delays():
            try:
                await acked
                return
            except KafkaUnavailable as exc:
                log.warning("%d windows not emitted; retry in %.1fs: %s", len(closed.records), delay, exc)
                await asyncio.sleep(delay)
                acked = self._send(closed)


class LatePublisher:
    """Sends late records (streams/late.py), keyed by project, to the late topic."""

    def __init__(self, sender: RecordSender, topic: str) -> None:
        self._sender = sender
        self._topic = topic

    async def publish(self, late: list[bytes]) -> bool:
        """Send `late` and wait for Kafka's acks; False when Kafka did not take them all (they
        are still in the checkpoint that holds them, and go out with the next one)."""
        try:
            acks = [await self._sender.send(self._topic, _project(r), r) for r in late]
            await asyncio.gather(*acks)
        except SEND_ERRORS as exc:
            log.warning("%d late records not sent; they go with the next checkpoint: %r", len(late), exc)
            return False
        return True


def _project(late: bytes) -> bytes:
    """The key of a late record: its project."""
    project: str = orjson.loads(late)["project"]
    return project.encode()
