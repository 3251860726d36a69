"""Events records folded into the state of their partition: the worker's agent calls `Folder.fold`
for each record it reads.

A record's events go into the windows and the alert rules of its partition at once, and the
alert changes they cause are published before the partition's lock is released, so that a
checkpoint never holds an alert state whose record Kafka has not acknowledged. The record is
acknowledged to Faust with the next checkpoint (streams/checkpointing.py). What cannot be folded
(a record the ingest would not write, events no window can hold, names over their cap) is
dead-lettered and the partition goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec

from plumbing.sentry import continued, sampled_trace
from schemas.records import distinct_request_ids
from streams.dead_letters import DeadLetters
from streams.envelope import EnvelopeView, Event, decode, raw_events
from streams.metrics import DUPLICATE_EVENTS, LATE_EVENTS, REFUSED_EVENTS, count_overflow, events_folded
from streams.partitions import EventsMessage, Partitions, PartitionState, record_context
from streams.publishing import AlertPublisher, PanePublisher
from streams.windows import Folded

log = logging.getLogger("cosnap.streams")


class Folder:
    """Folds events records into the state of the partitions a worker owns."""

    def __init__(
        self,
        partitions: Partitions,
        alerts: AlertPublisher,
        dead_letters: DeadLetters,
        ack: Callable[[EventsMessage], None],
        wake: Callable[[], None],
        panes: PanePublisher | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`ack` acknowledges a record to Faust; `wake` is called when a record moved the
        watermark past a window (streams/emission.py, Emission.wake). `panes` sends the
        partition's part of the rules spanning partitions, and those of the worker's other
        partitions, right after a record that makes one of their groups hold (None: no rule spans
        them); otherwise the timer sends them."""
        self._partitions = partitions
        self._alerts = alerts
        self._dead_letters = dead_letters
        self._ack = ack
        self._wake = wake
        self._panes = panes
        self._clock = clock

    async def fold(self, message: EventsMessage, value: bytes) -> None:
        """Fold the events record `value`, read as `message`, into its partition's state. A record
        of a sampled trace (an ingest request Sentry traces) is folded in a transaction of that
        trace; any other costs a look at its headers."""
        trace = sampled_trace(message.headers)
        if trace is None:
            await self._fold_record(message, value)
            return
        with continued(trace, op="streams.fold", name="fold events record") as span:
            span.set_data("messaging.destination.name", message.topic)
            span.set_data("messaging.message.id", f"{message.partition}@{message.offset}")
            await self._fold_record(message, value)

    async def _fold_record(self, message: EventsMessage, value: bytes) -> None:
        state = await self._partitions.state_of(message.partition)
        if message.offset < state.next_offset:  # already in the checkpoint it resumed from
            self._ack(message)
            return
        try:
            envelope = decode(value)
        except msgspec.DecodeError as exc:  # not written by the ingest: set it aside, go on
            await self._dead_letters.unreadable(message, value, exc)
            async with state.lock:
                state.passed(message)
            return
        folded = await self._fold(state, message, envelope)
        if isinstance(folded, Exception):
            await self._dead_letters.unreadable(message, value, folded)
            return
        if folded.refused:
            REFUSED_EVENTS.inc(len(folded.refused))
            refused = folded.refused
            await self._dead_letters.events(message, value, envelope, refused, "cannot be held by any window")
        overflowing, over_cap = state.windows.take_overflow()
        if overflowing:
            count_overflow(overflowing)
        if over_cap:
            await self._dead_letters.events(message, value, envelope, over_cap, "are of names over the cap")
        _count(message, value, envelope, folded)

    async def _fold(
        self, state: PartitionState, message: EventsMessage, envelope: EnvelopeView
    ) -> Folded | Exception:
        """Fold the record in and publish the alert changes it caused, under the partition's
        lock. Returns the exception instead when the record could not be folded."""
        now = self._clock()
        async with state.lock:
            folded: Folded | Exception
            changes: list[dict[str, Any]] = []
            try:
                folded, changes = state.fold(message.partition, message.offset, envelope, now)
            except Exception as exc:  # a record no ingest writes (or a bug): set it aside, go on
                folded = exc
            if state.windows.due(now):
                self._wake()
            state.passed(message)
            if changes:
                await self._alerts.publish(message.partition, changes)
            urgent = self._panes is not None and state.alerts.urgent
        if urgent and self._panes is not None:
            # Every partition's part, not only this one's: the merging stage evaluates the group
            # once the oldest partition clock it knows is in the group's pane.
            await self._panes.send_parts(self._partitions, now)
        return folded


def _count(message: EventsMessage, value: bytes, envelope: EnvelopeView, folded: Folded) -> None:
    """Count the events of a record by what became of them, and log the late ones with the
    requests that carried them."""
    project = envelope.project
    late, duplicates = len(folded.late), folded.duplicates
    events_folded(message.partition).inc(len(envelope.events) - late - len(folded.refused) - duplicates)
    if duplicates:
        DUPLICATE_EVENTS.labels(project).inc(duplicates)
    if late:
        LATE_EVENTS.labels(project).inc(late)
        log.info(
            "%d events of %s[%d]@%d came after their window closed: sent as late events",
            late,
            message.topic,
            message.partition,
            message.offset,
            extra=record_context(message.topic, message.partition, message.offset)
            | {"request_ids": _request_ids_of(value, envelope, [event for event, _ in folded.late])},
        )


def _request_ids_of(value: bytes, envelope: EnvelopeView, events: list[Event]) -> list[str]:
    """The distinct requests that carried `events` of a record (read again from its bytes: the
    structs hold no request id, and few events are late)."""
    positions = {id(event): i for i, event in enumerate(envelope.events)}
    raws = raw_events(value)
    return distinct_request_ids(str(raws[positions[id(event)]].get("request_id", "")) for event in events)
