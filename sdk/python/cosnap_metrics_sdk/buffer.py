"""The bounded in-memory queue of events waiting to be sent, oldest first.

Every event gets a sequence number when it is buffered. The queue stays ordered by it, also
when a failed batch is put back at the front, so "everything tracked before sequence N has a
final answer" is simply "the oldest pending event is newer than N" (what `flush()` waits for).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from cosnap_metrics_sdk.events import EncodedEvent


@dataclass(slots=True)
class PendingEvent:
    seq: int
    event: EncodedEvent
    attempts: int = 0


class EventBuffer:
    """FIFO holding at most `max_events`; a full buffer drops its oldest events.

    Not thread-safe: the client calls it under its own lock. No method blocks.
    """

    def __init__(self, max_events: int) -> None:
        if max_events < 1:
            raise ValueError("max_events must be at least 1")
        self._events: deque[PendingEvent] = deque()
        self._max_events = max_events
        self._last_seq = 0

    def __len__(self) -> int:
        return len(self._events)

    @property
    def last_seq(self) -> int:
        """Sequence number of the newest event ever buffered (0 before the first)."""
        return self._last_seq

    @property
    def oldest_seq(self) -> int | None:
        return self._events[0].seq if self._events else None

    def append(self, event: EncodedEvent) -> list[PendingEvent]:
        """Buffer `event` and return the events dropped to make room (oldest first)."""
        self._last_seq += 1
        self._events.append(PendingEvent(self._last_seq, event))
        return self._trim()

    def take(self, max_events: int, max_bytes: int) -> list[PendingEvent]:
        """Remove and return the oldest events: at most `max_events`, and (but at least one)
        no more than `max_bytes` of encoded events plus their separating commas."""
        batch: list[PendingEvent] = []
        size = 0
        while self._events and len(batch) < max_events:
            grown = size + len(self._events[0].event.body) + (1 if batch else 0)
            if batch and grown > max_bytes:
                break
            batch.append(self._events.popleft())
            size = grown
        return batch

    def requeue(self, batch: list[PendingEvent]) -> list[PendingEvent]:
        """Put a batch that could not be delivered back at the front, in order; return the
        events dropped if that overflows the buffer (the oldest, so from this batch first)."""
        self._events.extendleft(reversed(batch))
        return self._trim()

    def clear(self) -> list[PendingEvent]:
        dropped = list(self._events)
        self._events.clear()
        return dropped

    def _trim(self) -> list[PendingEvent]:
        dropped: list[PendingEvent] = []
        while len(self._events) > self._max_events:
            dropped.append(self._events.popleft())
        return dropped
