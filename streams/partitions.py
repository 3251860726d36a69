"""The state a worker holds for each events partition it owns, and the map of those partitions.

Envelopes are keyed by project, so a partition holds whole series and whole alert groups: each
owned partition has windows and an alert engine of its own. A partition's state is loaded (from
its newest checkpoint, streams/checkpointing.py) when its first record arrives, and dropped when
the partition is revoked: the next owner resumes from that checkpoint.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from streams.alerts import AlertEngine
from streams.envelope import EnvelopeView
from streams.late import late_record
from streams.windows import EventTimeWindows, Folded


class EventsMessage(Protocol):
    """What the worker uses of the Faust message of an events record (faust.types.Message).
    Its `value` is dropped once the record is folded, while the message waits for its ack."""

    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...

    @property
    def key(self) -> bytes | None: ...

    @property
    def headers(self) -> Iterable[tuple[str, bytes | None]] | Mapping[str, bytes] | None: ...

    value: bytes | None


@dataclass
class PartitionState:
    """The windows of one events partition, and the records folded in since the last checkpoint."""

    windows: EventTimeWindows
    alerts: AlertEngine
    next_offset: int = 0  # the first offset not folded into `windows`
    unacked: list[EventsMessage] = field(default_factory=list)  # to ack after the next checkpoint
    # Late records (streams/late.py) of the records folded so far: they go out after the next
    # checkpoint, which holds them until Kafka has them.
    late_outbox: list[bytes] = field(default_factory=list)
    checkpointed_at: float = field(default_factory=time.monotonic)
    # Held while a record is folded in and the alert changes it caused are published, and while
    # a snapshot is taken: a checkpoint never holds half a record, nor an alert state whose
    # record Kafka has not acknowledged.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def fold(
        self, partition: int, offset: int, envelope: EnvelopeView, now: float
    ) -> tuple[Folded, list[dict[str, Any]]]:
        """Fold the record at `offset` into the windows and the alert rules, and its late events
        into the outbox; return what the windows did with it and the alert changes it caused.
        Call it with `lock` held."""
        folded = self.windows.add_envelope(partition, envelope, now, offset)
        changes = self.alerts.add(envelope.project, folded, now)
        if folded.late:
            late = late_record(envelope.project, partition, offset, now, folded.late, self.windows.step_index)
            self.late_outbox.append(late)
        return folded, changes

    def passed(self, message: EventsMessage) -> None:
        """Record `message` as folded (or set aside): the partition goes on after it, and it is
        acknowledged with the next checkpoint. Call it with `lock` held."""
        self.next_offset = message.offset + 1
        message.value = None  # the message waits for its ack; its bytes need not
        self.unacked.append(message)


# Loads the state of the partitions given (assigned to this worker and still without state).
Loader = Callable[[list[int]], Awaitable[dict[int, PartitionState]]]


class Partitions:
    """The events partitions this worker owns, each with its state."""

    def __init__(self, load: Loader, assigned: Callable[[], Iterable[int]]) -> None:
        """`load` builds the state of partitions (streams/checkpointing.py, Restorer.load);
        `assigned` names the events partitions the consumer is assigned at the moment."""
        self._load = load
        self._assigned = assigned
        self._states: dict[int, PartitionState] = {}
        self._loading = asyncio.Lock()

    async def state_of(self, partition: int) -> PartitionState:
        """The partition's state. The first record of a partition without state loads that of
        every assigned partition still without one, in one read."""
        state = self._states.get(partition)
        if state is not None:
            return state
        async with self._loading:
            if partition not in self._states:
                wanted = sorted((set(self._assigned()) | {partition}) - set(self._states))
                self._states.update(await self._load(wanted))
        return self._states[partition]

    def owns(self, partition: int, state: PartitionState) -> bool:
        """Whether `state` is still the state of `partition` (not revoked since it was taken)."""
        return self._states.get(partition) is state

    def forget(self, partition: int) -> None:
        """The partition was revoked: another worker resumes it from its checkpoint."""
        self._states.pop(partition, None)

    def items(self) -> list[tuple[int, PartitionState]]:
        """(partition, state) of each partition owned now (a list: partitions may come and go
        while the caller awaits)."""
        return list(self._states.items())

    def next_offsets(self) -> dict[int, int]:
        """The next offset to fold of each partition owned."""
        return {partition: state.next_offset for partition, state in self._states.items()}


def record_context(topic: str, partition: int, offset: int) -> dict[str, Any]:
    """The log (and Sentry) context of a record."""
    return {"topic": topic, "partition": partition, "offset": offset}
