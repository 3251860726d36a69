"""Checkpoints of partition state: written by `Checkpointer`, read back by `Restorer` when a
worker starts to own a partition (the format, and the reads from Kafka, are streams/checkpoint.py).

A checkpoint holds a snapshot of the partition's windows, alert engine and late records not yet
sent, with the offset of the first record it does not include. The records it covers are
acknowledged to Faust only once Kafka has it, so the committed offset never passes a checkpoint,
and the late records it holds go out only then (streams/late.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import msgspec

from plumbing.backoff import Backoff
from streams.checkpoint import Checkpoint, SourceUnavailable, encode
from streams.envelope import decode
from streams.partitions import EventsMessage, PartitionState, record_context
from streams.publishing import LatePublisher, RecordSender

log = logging.getLogger("cosnap.streams")
# Alert records are read back from this long before the oldest checkpoint was taken: a margin, so
# that none published after a snapshot is missed.
ALERTS_READ_BACK_S = 60
T = TypeVar("T")


class CheckpointSource(Protocol):
    """Where a restored partition's state is read from. Each call blocks (on Kafka: the
    checkpoints, events and alerts topics), so it runs in a thread, and raises
    SourceUnavailable when the source does not answer."""

    def latest(self, partitions: list[int]) -> dict[int, Checkpoint]:
        """The newest checkpoint of each of `partitions` that has one."""
        ...

    def records(self, partition: int, start: int, end: int) -> list[tuple[int, bytes]]:
        """(offset, value) of the events records of `partition` from `start` up to `end`."""
        ...

    def published_alerts(self, partitions: set[int], since: float | None) -> dict[int, list[dict[str, Any]]]:
        """The alert records published for `partitions` since wall time `since` (None: ever),
        in the order they were written."""
        ...


class Checkpointer:
    """Writes a partition's checkpoint, then acknowledges the records it covers and sends the
    late records it holds."""

    def __init__(
        self,
        sender: RecordSender,
        topic: str,
        events_topic: str,
        late: LatePublisher,
        ack: Callable[[EventsMessage], None],
        every_s: float,
    ) -> None:
        """Checkpoints go to `topic`, partition p of it holding events partition p of
        `events_topic`; `ack` acknowledges an events record to Faust; a partition with records
        waiting is checkpointed every `every_s` seconds at most."""
        self._sender = sender
        self._topic = topic
        self._events_topic = events_topic
        self._late = late
        self._ack = ack
        self._every_s = every_s

    def due(self, state: PartitionState) -> bool:
        """Whether the partition has records or late records waiting for a checkpoint, and its
        last one is `every_s` old."""
        pending = state.unacked or state.late_outbox
        return bool(pending) and time.monotonic() - state.checkpointed_at >= self._every_s

    async def checkpoint(self, partition: int, state: PartitionState) -> None:
        """Write the checkpoint of `state` to partition `partition` of the checkpoints topic and
        wait for Kafka's ack; then acknowledge the records it covers, and send its late records.
        Raises what the sender raised when Kafka did not take it: the records wait for the next
        checkpoint then."""
        # Snapshot and the messages it covers are taken together, before any await lets the
        # agent fold in more records (those wait for the next checkpoint).
        async with state.lock:
            outbox = list(state.late_outbox)
            value = encode(Checkpoint(state.next_offset, _snapshot(state, outbox)))
        covered, state.unacked = state.unacked, []
        try:
            await (await self._sender.send(self._topic, str(partition).encode(), value, partition=partition))
        except Exception:
            state.unacked = covered + state.unacked
            log.exception(
                "checkpoint of events partition %d failed",
                partition,
                extra=record_context(self._events_topic, partition, state.next_offset),
            )
            raise
        for message in covered:
            self._ack(message)
        state.checkpointed_at = time.monotonic()
        if outbox and await self._late.publish(outbox):
            sent = set(map(id, outbox))
            state.late_outbox = [late for late in state.late_outbox if id(late) not in sent]


def _snapshot(state: PartitionState, outbox: list[bytes]) -> dict[str, Any]:
    """What a checkpoint holds of `state` (live accumulators: encode it before the lock goes)."""
    return state.windows.to_state() | {
        "alerts": state.alerts.to_state(),
        "taken_at": time.time(),
        "late_outbox": [late.decode() for late in outbox],
    }


async def read_until_answered(call: Callable[[], T], backoff: Backoff, what: str) -> T:
    """`call` (a read of Kafka that raises SourceUnavailable) in a thread, again after a wait
    until it answers."""
    attempt = 0
    while True:
        try:
            return await asyncio.to_thread(call)
        except SourceUnavailable as exc:
            attempt += 1
            delay = backoff.delay(attempt)
            log.warning("%s not read, trying again in %.1fs: %s", what, delay, exc)
            await asyncio.sleep(delay)


class Restorer:
    """Builds the state of partitions a worker starts to own, as their previous owner left it:
    from each one's newest checkpoint, the records whose event ids it held, and the alert
    changes it published after the checkpoint was taken. A read the source cannot answer is
    tried again until it can: the record waiting for the state must not be skipped (an agent
    that raised would be restarted by Faust after it, and the record never folded)."""

    def __init__(
        self, source: CheckpointSource, fresh: Callable[[], PartitionState], backoff: Backoff | None = None
    ) -> None:
        """`fresh` makes the state of a partition without a checkpoint."""
        self._source = source
        self._fresh = fresh
        self._backoff = backoff or Backoff(initial=0.5, cap=5.0)

    async def _read(self, call: Callable[[], T]) -> T:
        return await read_until_answered(call, self._backoff, "partition state")

    async def load(self, partitions: list[int]) -> dict[int, PartitionState]:
        """The state of each of `partitions`, whole: their records are folded from its
        `next_offset` on."""
        found = await self._read(lambda: self._source.latest(partitions))
        states: dict[int, PartitionState] = {}
        for partition in partitions:
            state = states[partition] = self._fresh()
            checkpoint = found.get(partition)
            if checkpoint is not None:
                _restore(state, checkpoint, time.time())
                await self._remember_held(partition, state, checkpoint.state.get("held_from"))
        # Alert changes published after a checkpoint was taken are in the alerts topic only: read
        # them back, so that replaying records neither repeats nor loses one.
        taken = [found[p].state.get("taken_at") if p in found else None for p in partitions]
        since = None if None in taken else min(t for t in taken if t is not None) - ALERTS_READ_BACK_S
        published = await self._read(lambda: self._source.published_alerts(set(partitions), since))
        for partition, records in published.items():
            for record in records:
                states[partition].alerts.apply_published(record)
        for partition in partitions:
            if partition in found:
                offset = found[partition].next_offset
                log.info("owns events partition %d from its checkpoint at offset %d", partition, offset)
            else:
                log.info("owns events partition %d, which has no checkpoint yet", partition)
        return states

    async def _remember_held(self, partition: int, state: PartitionState, held_from: int | None) -> None:
        """Read again the records whose event ids the checkpoint's worker held (from `held_from`
        up to the checkpoint), so that retries of their events are still recognised."""
        if held_from is None or held_from >= state.next_offset:
            return
        records = await self._read(lambda: self._source.records(partition, held_from, state.next_offset))
        for offset, value in records:
            try:
                state.windows.remember(decode(value), offset)
            except msgspec.DecodeError:
                continue  # dead-lettered when it was first read
        log.info("read %d records of events partition %d again for their event ids", len(records), partition)


def _restore(state: PartitionState, checkpoint: Checkpoint, now: float) -> None:
    """Put what `checkpoint` holds into the fresh `state`."""
    state.windows.restore(checkpoint.state, now)
    if "alerts" in checkpoint.state:  # absent from checkpoints of 0.1
        state.alerts.restore(checkpoint.state["alerts"], now)
    state.next_offset = checkpoint.next_offset
    state.late_outbox = [late.encode() for late in checkpoint.state.get("late_outbox", [])]
