"""The Faust worker: envelopes in, final 10-second, 1-minute and 1-hour windows out.

Agents stay thin: they decode records and hand them to `EventTimeWindows`, one per events
partition (envelopes are keyed by project, so a partition holds whole series); a timer closes
windows, sends them to the aggregates topic and checkpoints the partition's state (see
streams/checkpoint.py); events too late for their window go to the dead-letter topic.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import faust
import orjson

from ingest.producer import EnvelopeProducer
from schemas.series import DEFAULT_SERIES
from schemas.settings import StreamsSettings
from schemas.topics import MAX_CHECKPOINT_BYTES
from streams.checkpoint import Checkpoint, encode, load_latest
from streams.series import SeriesResolver
from streams.watermark import Watermark
from streams.windows import EventTimeWindows

log = logging.getLogger("cosnap.streams")


@dataclass
class PartitionState:
    """The windows of one events partition, and the records folded in since the last checkpoint."""

    windows: EventTimeWindows
    next_offset: int = 0  # the first offset not folded into `windows`
    unacked: list[Any] = field(default_factory=list)  # Faust messages to ack after the next checkpoint
    checkpointed_at: float = 0.0


def create_app(settings: StreamsSettings) -> faust.App:
    topics = settings.topics
    (settings.data_dir / "streams").mkdir(parents=True, exist_ok=True)  # Faust makes only the leaf
    app = faust.App(
        f"{topics.internal}streams",
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="memory://",
        datadir=str(settings.data_dir / "streams"),
        web_enabled=False,
        producer_acks=-1,
        producer_max_request_size=MAX_CHECKPOINT_BYTES,
        consumer_auto_offset_reset="earliest",
        topic_replication_factor=1,
        # A worker killed without leaving the group holds its partitions until this runs out.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
        # Offsets advance only with checkpoints; a rebalance must not wait for acks that will come
        # with the next checkpoint (the new owner resumes from that checkpoint instead).
        stream_wait_empty=False,
    )
    events = app.topic(topics.events, key_serializer="raw", value_serializer="raw")
    # Windows go out through librdkafka: one future per batch instead of an awaited Faust send
    # per window (which cost more than computing the window, see BENCHMARKS.md).
    emitter = EnvelopeProducer(
        settings.kafka_bootstrap, timeout_s=30.0, client_id="cosnap-streams", queue_max_messages=1_000_000
    )
    states: dict[int, PartitionState] = {}
    loading = asyncio.Lock()

    def new_windows() -> EventTimeWindows:
        return EventTimeWindows(
            Watermark(lateness_s=settings.window_lateness_s, idle_s=settings.watermark_idle_s),
            grace_s=settings.window_grace_s,
            series=SeriesResolver(DEFAULT_SERIES),
        )

    async def state_of(partition: int) -> PartitionState:
        """The partition's state. The first record of a partition without state loads the newest
        checkpoints of every assigned partition still without one, in one read."""
        state = states.get(partition)
        if state is not None:
            return state
        async with loading:
            if partition not in states:
                assigned = {tp.partition for tp in app.consumer.assignment() if tp.topic == topics.events}
                wanted = sorted((assigned | {partition}) - set(states))
                found = await asyncio.to_thread(
                    load_latest, settings.kafka_bootstrap, topics.checkpoints, wanted
                )
                for p in wanted:
                    fresh = PartitionState(new_windows(), checkpointed_at=time.monotonic())
                    checkpoint = found.get(p)
                    if checkpoint is None:
                        log.info("owns events partition %d, which has no checkpoint yet", p)
                    else:
                        fresh.windows.restore(checkpoint.state, time.time())
                        fresh.next_offset = checkpoint.next_offset
                        log.info(
                            "owns events partition %d from its checkpoint at offset %d",
                            p,
                            checkpoint.next_offset,
                        )
                    states[p] = fresh
        return states[partition]

    async def send(topic: str, key: bytes, value: bytes, partition: int | None = None) -> Any:
        """Queue one record on Faust's producer; the returned future resolves on Kafka's ack."""
        return await app.producer.send(topic, key, value, partition=partition, timestamp=None, headers=None)

    @app.agent(events)
    async def fold_envelopes(stream: Any) -> None:
        async for record in stream.noack().events():
            message = record.message
            state = await state_of(message.partition)
            if message.offset < state.next_offset:  # already in the checkpoint it resumed from
                app.consumer.ack(message)
                continue
            envelope = orjson.loads(record.value)
            late = state.windows.add_envelope(message.partition, envelope, time.time())
            state.next_offset = message.offset + 1
            message.value = None  # the message waits for its ack; its bytes need not
            state.unacked.append(message)
            acks = [
                await send(topics.dead_letter, envelope["project"].encode(), _late_record(envelope, event))
                for event in late
            ]
            await asyncio.gather(*acks)

    async def checkpoint(partition: int, state: PartitionState) -> None:
        if states.get(partition) is not state:  # revoked meanwhile: the new owner checkpoints it
            return
        # Snapshot and the messages it covers are taken together, before any await lets the
        # agent fold in more records (those wait for the next checkpoint).
        value = encode(Checkpoint(state.next_offset, state.windows.to_state()))
        covered, state.unacked = state.unacked, []
        try:
            await (await send(topics.checkpoints, str(partition).encode(), value, partition=partition))
        except Exception:  # Kafka refused or timed out: these records wait for the next checkpoint
            state.unacked = covered + state.unacked
            raise
        for message in covered:
            app.consumer.ack(message)
        state.checkpointed_at = time.monotonic()

    @app.timer(settings.tick_s)
    async def emit_closed_windows() -> None:
        now = time.time()
        for partition, state in list(states.items()):
            for records in state.windows.close_ready(now):
                acked = asyncio.get_running_loop().create_future()
                emitter.produce_all(
                    topics.aggregates,
                    [
                        (f"{r['series_id']}|{r['granularity']}|{r['window_start']}".encode(), orjson.dumps(r))
                        for r in records
                    ],
                    acked,
                )
                await acked
            # Windows emitted since the last checkpoint would be emitted again, with the same
            # numbers, by a worker resuming from it: checkpoints need not follow every emission.
            if state.unacked and time.monotonic() - state.checkpointed_at >= settings.checkpoint_s:
                await checkpoint(partition, state)

    async def forget_revoked(_sender: Any, revoked: set[Any], **_: Any) -> None:
        # Another worker resumes these partitions from their checkpoints.
        for tp in revoked:
            if tp.topic == topics.events:
                states.pop(tp.partition, None)

    app.on_partitions_revoked.connect(forget_revoked)  # type: ignore[arg-type]  # mode's signal typing
    return app


def _late_record(envelope: dict[str, Any], event: dict[str, Any]) -> bytes:
    """A dead-letter record (schemas.records.DeadLetter) for an event its window closed without."""
    return orjson.dumps(
        {
            "v": 1,
            "project": envelope["project"],
            "request_id": event["request_id"],
            "received_at": event["received_at"],
            "index": None,
            "reason": "late",
            "raw": orjson.dumps(event).decode(),
        }
    )
