"""The worker's timer and its emission of closed windows.

Windows go to the aggregates topic as soon as a record moves the watermark past them (`wake`),
and on every tick, for partitions whose watermark moves with the wall clock. A tick also
evaluates alert rules on quiet partitions, and checkpoints the partitions due for one: after the
acks of the windows it emitted, since a checkpoint no longer holds the windows emitted before it.
One emission runs at a time: closed windows leave the partition state when they are sent, and no
checkpoint may be taken before Kafka has them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from streams.checkpointing import Checkpointer
from streams.metrics import CHECKPOINT_SECONDS
from streams.partitions import Partitions
from streams.publishing import AlertPublisher, PanePublisher, WindowPublisher


class Emission:
    """Emits the windows of the partitions a worker owns, one emission at a time, and runs the
    rounds of the timer."""

    def __init__(
        self,
        partitions: Partitions,
        windows: WindowPublisher,
        alerts: AlertPublisher,
        checkpointer: Checkpointer,
        panes: PanePublisher | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`panes` sends each partition's part of the alert rules spanning partitions (None: no
        rule spans them, streams/merging.py)."""
        self._partitions = partitions
        self._panes = panes
        self._windows = windows
        self._alerts = alerts
        self._checkpointer = checkpointer
        self._clock = clock
        self._emitting = asyncio.Lock()  # held while closed windows are out and unacknowledged
        self._due = asyncio.Event()  # a record moved a watermark past a window

    def wake(self) -> None:
        """A record moved a watermark past a window: emit it without waiting for the next tick."""
        self._due.set()

    async def emit_when_woken(self) -> None:
        """Wait for `wake`, then emit the windows closed by then (call it in a loop)."""
        await self._due.wait()
        self._due.clear()
        async with self._emitting:
            await self._emit()

    async def tick(self) -> None:
        """Publish the alert changes of the wall clock and the partitions' parts of the panes of
        rules spanning partitions, emit the windows closed by now, and checkpoint the partitions
        due for it once Kafka has those windows (a checkpoint never holds panes whose part was
        not sent)."""
        now = self._clock()
        for partition, state in self._partitions.items():
            async with state.lock:
                changes = state.alerts.tick(now)
                if changes:
                    await self._alerts.publish(partition, changes)
        if self._panes is not None:
            await self._panes.send_parts(self._partitions, now)
        async with self._emitting:
            await self._emit()
            for partition, state in self._partitions.items():
                # Windows emitted since the last checkpoint would be emitted again, with the same
                # numbers, by a worker resuming from it: checkpoints need not follow every tick.
                # A partition revoked meanwhile is checkpointed by its new owner.
                if self._partitions.owns(partition, state) and self._checkpointer.due(state):
                    with CHECKPOINT_SECONDS.time():
                        await self._checkpointer.checkpoint(partition, state)

    async def _emit(self) -> None:
        """Send the windows the watermark closed, of every partition, and wait for their acks.
        Called with `_emitting` held."""
        now = self._clock()
        await self._windows.publish(
            closed for _, state in self._partitions.items() for closed in state.windows.close_ready(now)
        )
