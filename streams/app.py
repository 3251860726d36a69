"""The Faust worker: envelopes in, final 10-second, 1-minute and 1-hour windows and alert state
changes out.

This module composes the worker on a Faust app; its agent, timer and tasks stay thin. The work is
done by objects that are given the Kafka side:

- `Partitions` (streams/partitions.py): the state of each events partition owned, windows and an
  alert engine (envelopes are keyed by project or by series, so a partition holds whole series
  and the whole groups of the rules a key holds);
- `Folder` (streams/folding.py): each events record folded into its partition's state, the
  alert changes it causes published at once, what cannot be folded dead-lettered;
- `Emission` (streams/emission.py): windows sent as soon as a record moves the watermark past
  them, and on the timer, which also evaluates alerts on quiet partitions and checkpoints;
- `Checkpointer` and `Restorer` (streams/checkpointing.py): each partition's state written to
  its checkpoint, and read back by the next owner; events too late for their pane go, one late
  record per events record, to `metrics.internal.late` once a checkpoint covers that record;
- `MergingStage` (streams/merging.py): with envelopes keyed by series, the alert rules whose
  groups span partitions, evaluated on every partition's part of their panes by the worker that
  owns the panes topic;
- streams/publishing.py: what goes to Kafka, sent again until Kafka acknowledges it.

`run_worker` runs it as `cosnap-metrics streams` does, stopped through plumbing/stopping.py.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import faust
from faust.types import Message

import streams.windows
from plumbing.kafka import AckedProducer
from plumbing.outage import Outage, watch_kafka
from plumbing.status import serve_status
from plumbing.stopping import Shutdown
from schemas.records import request_ids_in
from schemas.rules import RuleFile, load_rules
from schemas.series import DEFAULT_SERIES
from schemas.settings import StreamsSettings
from schemas.topics import EVENT_PARTITIONS, MAX_CHECKPOINT_BYTES
from streams.alerts import AlertEngine
from streams.checkpoint import KafkaCheckpoints
from streams.checkpointing import Checkpointer, Restorer
from streams.dead_letters import DeadLetters
from streams.emission import Emission
from streams.folding import Folder
from streams.merging import MergingStage, PaneMerger
from streams.metrics import WorkerStatus
from streams.partitions import EventsMessage, Partitions, PartitionState, record_context
from streams.publishing import AlertPublisher, LatePublisher, PanePublisher, WindowPublisher
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


@dataclass(frozen=True)
class Worker:
    """The worker's objects, composed on a Faust app: what its agent, timer and tasks call."""

    partitions: Partitions
    folder: Folder
    emission: Emission
    status: WorkerStatus
    kafka: Outage
    merging: MergingStage | None  # None: no alert rule spans partitions

    def held(self) -> str:
        """Records folded since their partition's last checkpoint, in words ("" when none): a
        stop now leaves them to be folded again from the checkpoint. Any thread."""
        folded = sum(len(state.unacked) for _, state in self.partitions.items())
        return f"events records folded since the last checkpoint: {folded}" if folded else ""


def run_worker(settings: StreamsSettings) -> int:
    """Run the worker until SIGTERM or SIGINT (`cosnap-metrics streams`). Faust's own stop with
    Kafka down waits 60 s for a consumer thread that has already died (docs/findings.md): the
    Shutdown's deadline ends it sooner."""
    app, worker = create_app(settings)
    # From the start, not once Faust is ready: an outage while it starts is told too.
    watch_kafka(settings.kafka_bootstrap, worker.kafka)

    class FaustWorker(faust.Worker):
        def _schedule_shutdown(self, signal: signal.Signals) -> None:  # mode's SIGTERM/SIGINT handler
            shutdown.request(signal)

        @property
        def shortlabel(self) -> str:  # the label of its log lines: "[^Worker]: Ready", as Faust's own
            return "Worker"

    # Faust would replace the logging configuration and draw a spinner on stdout; without the
    # spinner it logs "[^Worker]: Ready" once started.
    faust_worker = FaustWorker(app, override_logging=False, quiet=True)
    faust_worker.spinner = None
    shutdown = Shutdown(
        lambda signum: faust.Worker._schedule_shutdown(faust_worker, signal.Signals(signum)), worker.held
    )
    faust_worker.execute_from_commandline()
    return 0  # execute_from_commandline ends with SystemExit


def create_app(settings: StreamsSettings) -> tuple[faust.App, Worker]:
    """The Faust app of the worker, and the objects it is composed of."""
    topics = settings.topics
    app = _faust_app(settings)
    worker = _compose(settings, app)
    events = app.topic(topics.events, key_serializer="raw", value_serializer="raw")

    @app.agent(events)
    @_logs_the_failed_record
    async def fold_envelopes(stream: Any) -> None:
        async for record in stream.noack().events():
            await worker.folder.fold(record.message, record.value)
            # Faust hands over buffered records without yielding to the event loop: during a
            # replay or a backlog the emission task and the timer would wait until the buffer
            # runs dry (windows, alert ticks and checkpoints held back for as long).
            await asyncio.sleep(0)

    @app.timer(settings.tick_s)
    async def tick() -> None:
        await worker.emission.tick()
        if worker.merging is not None:
            await worker.merging.tick()
        worker.status.ticked(app.consumer, topics.events, worker.partitions.next_offsets())

    merging = worker.merging
    if merging is not None:
        panes = app.topic(topics.panes, key_serializer="raw", value_serializer="raw")

        @app.agent(panes)
        async def merge_panes(stream: Any) -> None:
            async for record in stream.noack().events():
                await merging.take(record.message.offset, record.value)
                app.consumer.ack(record.message)

    @app.task
    async def emit_due_windows() -> None:
        """Emit windows as soon as a record moves the watermark past them, not at the next tick."""
        while not app.should_stop:
            await worker.emission.emit_when_woken()

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
        serve_status(settings.metrics_host, settings.streams_metrics_port, worker.status.health)

    async def forget_revoked(_sender: Any, revoked: set[Any], **_: Any) -> None:
        # Another worker resumes these partitions from their checkpoints.
        for tp in revoked:
            if tp.topic == topics.events:
                worker.partitions.forget(tp.partition)
                worker.status.forget(tp.partition)
            elif tp.topic == topics.panes and worker.merging is not None:
                worker.merging.forget()

    app.on_partitions_revoked.connect(forget_revoked)  # type: ignore[arg-type]  # mode's signal typing
    return app, worker


def _faust_app(settings: StreamsSettings) -> faust.App:
    (settings.data_dir / "streams").mkdir(parents=True, exist_ok=True)  # Faust makes only the leaf
    return faust.App(
        f"{settings.topics.internal}streams",
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="memory://",
        datadir=str(settings.data_dir / "streams"),
        web_enabled=False,
        producer_acks=-1,
        producer_max_request_size=MAX_CHECKPOINT_BYTES,
        consumer_auto_offset_reset="earliest",
        topic_replication_factor=settings.kafka_replication,
        # A worker killed without leaving the group holds its partitions until this runs out.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
        # Offsets advance only with checkpoints; a rebalance must not wait for acks that will come
        # with the next checkpoint (the new owner resumes from that checkpoint instead).
        stream_wait_empty=False,
    )


def _compose(settings: StreamsSettings, app: faust.App) -> Worker:
    """The worker's objects on `app`'s consumer and producer, and on a librdkafka producer for
    the windows."""
    topics = settings.topics
    # Windows go out through librdkafka: one future per batch instead of an awaited Faust send
    # per window (which cost more than computing the window, see BENCHMARKS.md).
    emitter = AckedProducer(
        settings.kafka_bootstrap, timeout_s=30.0, client_id="cosnap-streams", queue_max_messages=1_000_000
    )
    sender = FaustSender(app)
    alerts = AlertPublisher(sender, topics.alerts)
    rules = load_rules(settings.rules_file)
    spanning: frozenset[str] = frozenset()
    if settings.events_key == "series":
        # Rules that read events (or, for their impact, revenue and funnels) of more than one
        # series key are evaluated on the merged panes of every partition (streams/merging.py).
        spanning = frozenset(rule.name for rule in rules.rules if not rule.within_one_series_key)
        if spanning:
            log.info(
                "envelopes are keyed by series: rules %s merged across partitions",
                ", ".join(sorted(spanning)),
            )
    compiled = not str(streams.windows.__file__).endswith(".py")
    log.info("windows and alerts run %s", "compiled (mypyc)" if compiled else "as Python (see `make native`)")

    def fresh_state() -> PartitionState:
        watermark = Watermark(lateness_s=settings.window_lateness_s, idle_s=settings.watermark_idle_s)
        series = SeriesResolver(DEFAULT_SERIES, settings.max_names_per_type)
        windows = EventTimeWindows(watermark, grace_s=settings.window_grace_s, series=series)
        return PartitionState(windows, AlertEngine(rules, settings.watermark_idle_s, spanning))

    def fresh_merger() -> PaneMerger:
        merged = RuleFile(rules=[rule for rule in rules.rules if rule.name in spanning])
        engine = AlertEngine(merged, settings.watermark_idle_s)
        return PaneMerger(engine, EVENT_PARTITIONS, settings.watermark_idle_s)

    def assigned() -> set[int]:
        return {tp.partition for tp in app.consumer.assignment() if tp.topic == topics.events}

    def ack(message: EventsMessage) -> None:
        app.consumer.ack(cast(Message, message))  # the worker holds only the agent's messages

    source = KafkaCheckpoints(
        settings.kafka_bootstrap, topics.checkpoints, topics.events, topics.alerts, topics.panes
    )
    partitions = Partitions(Restorer(source, fresh_state).load, assigned)
    late = LatePublisher(sender, topics.late)
    checkpointer = Checkpointer(sender, topics.checkpoints, topics.events, late, ack, settings.checkpoint_s)
    panes = PanePublisher(sender, topics.panes) if spanning else None
    emission = Emission(partitions, WindowPublisher(emitter, topics.aggregates), alerts, checkpointer, panes)
    folder = Folder(partitions, alerts, DeadLetters(sender, topics.dead_letter), ack, emission.wake, panes)
    kafka = Outage("Kafka", log)
    merging = MergingStage(fresh_merger, source, alerts) if spanning else None
    return Worker(partitions, folder, emission, WorkerStatus(settings.tick_s, kafka), kafka, merging)


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
                    extra=record_context(message.topic, message.partition, message.offset)
                    | {"request_ids": request_ids_in(message.headers)},
                )
            raise

    return run
