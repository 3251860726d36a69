"""The Faust worker: envelopes in, final 10-second, 1-minute and 1-hour windows and alert state
changes out.

Agents stay thin: they decode records and hand them to `EventTimeWindows` and `AlertEngine`, one
of each per events partition (envelopes are keyed by project, so a partition holds whole series
and whole alert groups). Alert changes go to the alerts topic as soon as a record causes them;
windows go to the aggregates topic as soon as a record moves the watermark past them (and on a
timer, for partitions whose watermark moves with the wall clock). The timer also evaluates
alerts on quiet partitions and checkpoints each partition's state (see streams/checkpoint.py);
events too late for their pane go, one late record per events record, to `metrics.internal.late`
once a checkpoint covers that record (streams/late.py).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import faust
import msgspec
import orjson
from faust.types import Message

import streams.windows
from plumbing.kafka import AckedProducer
from plumbing.status import serve_status
from schemas.records import (
    DeadLetter,
    distinct_request_ids,
    request_ids_header,
    request_ids_in,
)
from schemas.rules import load_rules
from schemas.series import DEFAULT_SERIES
from schemas.settings import StreamsSettings
from schemas.topics import MAX_CHECKPOINT_BYTES
from streams.alerts import AlertEngine
from streams.checkpoint import KafkaCheckpoints
from streams.checkpointing import Checkpointer, Restorer
from streams.emission import Emission
from streams.envelope import EnvelopeView as Envelope
from streams.envelope import Event, decode, raw_events
from streams.late import late_record
from streams.metrics import (
    DUPLICATE_EVENTS,
    LATE_EVENTS,
    REFUSED_EVENTS,
    WorkerStatus,
    count_overflow,
    events_folded,
)
from streams.partitions import EventsMessage, Partitions, PartitionState
from streams.publishing import AlertPublisher, LatePublisher, WindowPublisher
from streams.series import SeriesResolver
from streams.watermark import Watermark
from streams.windows import EventTimeWindows

log = logging.getLogger("cosnap.streams")
GC_YOUNG_THRESHOLD = 50_000


class FaustSender:
    """RecordSender (streams/publishing.py) over Faust's producer, which the worker writes its
    alerts, late records, dead letters and checkpoints with (the app makes it on start)."""

    def __init__(self, app: faust.App) -> None:
        self._app = app

    async def send(
        self,
        topic: str,
        key: bytes,
        value: bytes,
        *,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Awaitable[object]:
        producer = self._app.producer
        acked: Awaitable[object] = await producer.send(
            topic, key, value, partition=partition, timestamp=None, headers=headers
        )
        return acked


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
    emitter = AckedProducer(
        settings.kafka_bootstrap, timeout_s=30.0, client_id="cosnap-streams", queue_max_messages=1_000_000
    )
    sender = FaustSender(app)
    alert_publisher = AlertPublisher(sender, topics.alerts)
    rules = load_rules(settings.rules_file)
    compiled = not str(streams.windows.__file__).endswith(".py")
    log.info("windows and alerts run %s", "compiled (mypyc)" if compiled else "as Python (see `make native`)")
    status = WorkerStatus(settings.tick_s)

    def new_windows() -> EventTimeWindows:
        return EventTimeWindows(
            Watermark(lateness_s=settings.window_lateness_s, idle_s=settings.watermark_idle_s),
            grace_s=settings.window_grace_s,
            series=SeriesResolver(DEFAULT_SERIES, settings.max_names_per_type),
        )

    def fresh_state() -> PartitionState:
        return PartitionState(new_windows(), AlertEngine(rules, settings.watermark_idle_s))

    def assigned() -> set[int]:
        return {tp.partition for tp in app.consumer.assignment() if tp.topic == topics.events}

    def ack(message: EventsMessage) -> None:
        app.consumer.ack(cast(Message, message))  # the worker holds only the agent's messages

    source = KafkaCheckpoints(settings.kafka_bootstrap, topics.checkpoints, topics.events, topics.alerts)
    partitions = Partitions(Restorer(source, fresh_state).load, assigned)
    checkpointer = Checkpointer(
        sender,
        topics.checkpoints,
        topics.events,
        LatePublisher(sender, topics.late),
        ack=ack,
        every_s=settings.checkpoint_s,
    )
    emission = Emission(
        partitions, WindowPublisher(emitter, topics.aggregates), alert_publisher, checkpointer
    )

    async def dead_letter_unreadable(message: Any, value: bytes, exc: Exception) -> None:
        """Log (and report to Sentry) an events record the worker cannot read, and send it to the
        dead-letter topic, as the sink does with records it cannot decode: it is in no window,
        and it does not stop its partition."""
        request_ids = request_ids_in(message.headers)
        log.error(
            "folding the envelope %s[%d]@%d failed: dead-lettered",
            message.topic,
            message.partition,
            message.offset,
            exc_info=exc,
            extra=_record_context(message.topic, message.partition, message.offset)
            | {"request_ids": request_ids},
        )
        dead_letter = DeadLetter.of_record(
            message.topic,
            message.partition,
            message.offset,
            project=None,
            reason=f"streams worker could not read the envelope: {exc}",
            raw=value,
        )
        record = dead_letter.model_dump_json().encode()
        headers = [request_ids_header(request_ids)]
        await (await sender.send(topics.dead_letter, message.key or b"", record, headers=headers))

    async def dead_letter_events(
        message: Any, value: bytes, envelope: Envelope, refused: list[tuple[Event, str]], what: str
    ) -> None:
        """Dead-letter events of a record one each with its reason: those no window can hold
        (a record written past the ingest: a timestamp that is no time, an amount Decimal(38, 9)
        cannot hold), or the first event of a name over its cap (counted under `__overflow__`,
        the dead letter says so). `what` says which, in the log line."""
        positions = {id(event): i for i, event in enumerate(envelope.events)}
        raws = raw_events(value)
        request_ids = request_ids_in(message.headers)
        acks = []
        for event, reason in refused:
            index = positions[id(event)]
            dead_letter = DeadLetter.of_record(
                message.topic,
                message.partition,
                message.offset,
                project=envelope.project,
                index=index,
                reason=reason,
                raw=orjson.dumps(raws[index]),
                request_id=str(raws[index].get("request_id") or ""),
            )
            record = dead_letter.model_dump_json().encode()
            headers = [request_ids_header(request_ids)]
            key = envelope.project.encode()
            acks.append(await sender.send(topics.dead_letter, key, record, headers=headers))
        await asyncio.gather(*acks)
        log.warning(
            "%d events of %s[%d]@%d %s: dead-lettered",
            len(refused),
            message.topic,
            message.partition,
            message.offset,
            what,
            extra=_record_context(message.topic, message.partition, message.offset)
            | {"request_ids": request_ids, "reasons": sorted({reason for _, reason in refused})[:5]},
        )

    @app.agent(events)
    @_logs_the_failed_record
    async def fold_envelopes(stream: Any) -> None:
        async for record in stream.noack().events():
            message = record.message
            state = await partitions.state_of(message.partition)
            if message.offset < state.next_offset:  # already in the checkpoint it resumed from
                app.consumer.ack(message)
                continue
            try:
                envelope = decode(record.value)
            except msgspec.DecodeError as exc:  # not written by the ingest: set it aside, go on
                await dead_letter_unreadable(message, record.value, exc)
                async with state.lock:
                    state.next_offset = message.offset + 1
                    message.value = None
                    state.unacked.append(message)
                continue
            now = time.time()
            async with state.lock:
                failure: Exception | None = None
                try:
                    folded = state.windows.add_envelope(message.partition, envelope, now, message.offset)
                    changes = state.alerts.add(envelope.project, folded, now)
                    if folded.late:
                        step_index = state.windows.step_index
                        late = late_record(
                            envelope.project, message.partition, message.offset, now, folded.late, step_index
                        )
                        state.late_outbox.append(late)
                except Exception as exc:  # a record no ingest writes (or a bug): set it aside, go on
                    folded, changes, failure = None, [], exc
                if state.windows.due(now):
                    emission.wake()
                state.next_offset = message.offset + 1
                raw = record.value  # kept for dead-letter records of refused events
                message.value = None  # the message waits for its ack; its bytes need not
                state.unacked.append(message)
                if changes:
                    await alert_publisher.publish(message.partition, changes)
            if failure is not None or folded is None:
                await dead_letter_unreadable(message, raw, failure or RuntimeError("nothing folded"))
                continue
            if folded.refused:
                REFUSED_EVENTS.inc(len(folded.refused))
                await dead_letter_events(
                    message, raw, envelope, folded.refused, "cannot be held by any window"
                )
            overflowing, over_cap = state.windows.take_overflow()
            if overflowing:
                count_overflow(overflowing)
            if over_cap:
                await dead_letter_events(message, raw, envelope, over_cap, "are of names over the cap")
            project = envelope.project
            late_count, duplicates = len(folded.late), folded.duplicates
            events_folded(message.partition).inc(
                len(envelope.events) - late_count - len(folded.refused) - duplicates
            )
            if duplicates:
                DUPLICATE_EVENTS.labels(project).inc(duplicates)
            if late_count:
                LATE_EVENTS.labels(project).inc(late_count)
                log.info(
                    "%d events of %s[%d]@%d came after their window closed: sent as late events",
                    late_count,
                    message.topic,
                    message.partition,
                    message.offset,
                    extra=_record_context(message.topic, message.partition, message.offset)
                    | {"request_ids": _request_ids_of(raw, envelope, [event for event, _ in folded.late])},
                )
            # Faust hands over buffered records without yielding to the event loop: during a
            # replay or a backlog the emission task and the timer would wait until the buffer
            # runs dry (windows, alert ticks and checkpoints held back for as long).
            await asyncio.sleep(0)

    @app.timer(settings.tick_s)
    async def tick() -> None:
        await emission.tick()
        status.ticked(app.consumer, topics.events, partitions.next_offsets())

    @app.task
    async def emit_due_windows() -> None:
        """Emit windows as soon as a record moves the watermark past them, not at the next tick."""
        while not app.should_stop:
            await emission.emit_when_woken()

    @app.task
    async def tune_garbage_collection() -> None:
        """Exempt what the worker made to start (Faust, pydantic: objects that live as long as it
        does) from the cyclic collector, which re-scanned them at each full collection. And
        collect the young generation every GC_YOUNG_THRESHOLD container allocations instead of
        700: a record makes thousands of short-lived lists and tuples, and most of the
        collector's passes found nothing to free (the cost is in BENCHMARKS.md and
        docs/findings.md)."""
        gc.freeze()
        gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])

    @app.task
    async def serve_metrics() -> None:
        """The worker's /metrics and /health (Faust's web server is off)."""
        serve_status(settings.metrics_host, settings.streams_metrics_port, status.health)

    async def forget_revoked(_sender: Any, revoked: set[Any], **_: Any) -> None:
        # Another worker resumes these partitions from their checkpoints.
        for tp in revoked:
            if tp.topic == topics.events:
                partitions.forget(tp.partition)
                status.forget(tp.partition)

    app.on_partitions_revoked.connect(forget_revoked)  # type: ignore[arg-type]  # mode's signal typing
    return app


def _logs_the_failed_record(agent: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
    """Faust logs an agent that raised as crashed, and restarts it; this first logs (and so
    reports to Sentry) the record it failed on, with the requests the record's header names."""

    @functools.wraps(agent)
    async def run(stream: Any) -> None:
        try:
            await agent(stream)
        except Exception:
            event = faust.current_event()
            if event is None:
                log.exception("folding envelopes failed")
            else:
                message = event.message
                log.exception(
                    "folding the envelope %s[%d]@%d failed",
                    message.topic,
                    message.partition,
                    message.offset,
                    extra=_record_context(message.topic, message.partition, message.offset)
                    | {"request_ids": request_ids_in(message.headers)},
                )
            raise

    return run


def _request_ids_of(value: bytes, envelope: Envelope, events: list[Event]) -> list[str]:
    """The distinct requests that carried `events` of a record (read again from its bytes: the
    structs hold no request id, and few events are late)."""
    positions = {id(event): i for i, event in enumerate(envelope.events)}
    raws = raw_events(value)
    return distinct_request_ids(str(raws[positions[id(event)]].get("request_id", "")) for event in events)


def _record_context(topic: str, partition: int, offset: int) -> dict[str, Any]:
    """The log (and Sentry) context of a record."""
    return {"topic": topic, "partition": partition, "offset": offset}
