"""`cosnap-metrics notify`: every record of the alerts topic to Alertmanager and signed webhooks.

What became of each record at each target (delivered after n tries, or failed and dead-lettered)
is published on `metrics.alert-deliveries.v1` before the record is committed, so that delivery
can be measured over days (docs/reference.md, "Alerting measured").

The notifier consumes `metrics.alerts.v1` in its own group and commits a record's offset only
after every target took it or, after the last try, it was dead-lettered for that target. A
crash therefore delivers a record again, never loses it: webhook receivers drop the repeated
`webhook-id`, Alertmanager merges alerts by their labels.

A record goes to all targets at once (one thread each) and the next record waits for all of
them, so a failing target delays the others by at most its retry budget (tries x backoff).

A new group starts at the end of the topic, so first configuring a webhook does not replay 90
days of history to it; Alertmanager instead gets every alert that is firing at start, found by
reading the topic, and then every firing alert again each `notify_resend_s`, as Prometheus does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata
from pydantic import ValidationError

from plumbing.backoff import Backoff
from plumbing.consumer_group import GroupConsumer
from plumbing.outage import Outage, watch_kafka
from plumbing.status import serve_status
from plumbing.stopping import EXIT_UNFLUSHED, Shutdown
from schemas.health import ServiceHealth
from schemas.records import AlertDelivery, AlertRecord, DeadLetter
from schemas.settings import VALIDATE_RULE, NotifierSettings
from sinks.notify.metrics import DEAD_LETTERS, DELIVERIES, DELIVERY_SECONDS, RETRIES
from sinks.notify.targets import (
    DELIVERED,
    AlertmanagerTarget,
    AlertTarget,
    ValidationTarget,
    WebhookTarget,
)

log = logging.getLogger("cosnap.notify")
KAFKA_CALL_TIMEOUT_MS = 3_000  # commits and close: kafka-python's commit() waits forever without one
RECONNECT_BACKOFF_MAX_MS = 1_000  # a broker back from an outage is tried again within a second


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_tries: int
    backoff: Backoff

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Wait before try `attempt + 1`; a target's Retry-After counts, up to the backoff cap."""
        return min(self.backoff.cap, self.backoff.delay(attempt, retry_after))


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one target's tries at one alert state change ended."""

    target: str
    outcome: Literal["delivered", "failed"]
    tries: int
    seconds: float
    error: str = ""
    reason: str = ""  # for the dead letter

    def record(self, alert: AlertRecord, finished_at: datetime) -> AlertDelivery:
        return AlertDelivery(
            fingerprint=alert.fingerprint,
            rule=alert.rule,
            project=alert.labels.get("project", ""),
            state=alert.state,
            starts_at=alert.starts_at,
            target=self.target,
            outcome=self.outcome,
            tries=self.tries,
            seconds=self.seconds,
            error=self.error[:1000],
            finished_at=finished_at,
        )


def delivery_id(alert: AlertRecord) -> str:
    """The `webhook-id`: the same for every delivery of one state change of one episode."""
    return f"alert_{alert.fingerprint}_{int(alert.starts_at.timestamp() * 1000)}_{alert.state}"


def firing_alerts(bootstrap: str, topic: str, stopping: threading.Event) -> dict[str, AlertRecord]:
    """Read the alerts topic from its start to its current end: the alerts whose latest state is
    firing, by fingerprint. Records are keyed by fingerprint, so one alert's changes are in order."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        ends: dict[TopicPartition, int] = consumer.end_offsets(partitions)
        latest: dict[str, AlertRecord] = {}
        while not stopping.is_set() and any(consumer.position(tp) < end for tp, end in ends.items()):
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    try:
                        alert = AlertRecord.model_validate_json(record.value)
                    except ValidationError:
                        continue  # dead-lettered when it was first delivered
                    latest[alert.fingerprint] = alert
        return {fp: alert for fp, alert in latest.items() if alert.state == "firing"}
    finally:
        consumer.close(autocommit=False)


class Notifier:
    """Runs until `stop()`; `run()` blocks the calling thread."""

    def __init__(
        self,
        *,
        bootstrap: str,
        group_id: str,
        alerts_topic: str,
        dead_letter_topic: str,
        deliveries_topic: str,
        targets: Sequence[AlertTarget],
        policy: RetryPolicy,
        alertmanager: AlertmanagerTarget | None = None,
        resend_s: float = 60.0,
    ) -> None:
        self._bootstrap = bootstrap
        self._alerts_topic = alerts_topic
        self._dead_letter_topic = dead_letter_topic
        self._deliveries_topic = deliveries_topic
        self._targets = list(targets)
        self._policy = policy
        self._alertmanager = alertmanager
        self._resend_s = resend_s
        self._stopping = threading.Event()
        # Held while Alertmanager is resent the firing alerts, and while an alert enters or leaves
        # them: a resend can then never re-fire an alert whose resolve was just posted.
        self._firing_lock = threading.Lock()
        self._firing: dict[str, AlertRecord] = {}
        self._pool = ThreadPoolExecutor(max_workers=max(len(self._targets), 1), thread_name_prefix="deliver")
        self._consumer = GroupConsumer(
            bootstrap_servers=bootstrap,
            group_id=group_id,
            client_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            session_timeout_ms=10_000,
            heartbeat_interval_ms=3_000,
            # A record may take all its tries on every target before the next poll.
            max_poll_interval_ms=600_000,
            reconnect_backoff_max_ms=RECONNECT_BACKOFF_MAX_MS,
        )
        self._anchored: set[TopicPartition] = set()
        # Dead letters and delivery outcomes.
        self._producer = KafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            client_id=f"{group_id}-dlq",
            reconnect_backoff_max_ms=RECONNECT_BACKOFF_MAX_MS,
        )
        self.kafka = Outage("Kafka", log)
        self.cut_short = False  # a record's delivery was stopped before every target took it

    def stop(self) -> None:
        self._stopping.set()

    def held(self) -> str:
        """What the notifier has not finished, in words ("" when nothing)."""
        return "an alert whose delivery was cut short" if self.cut_short else ""

    def health(self) -> ServiceHealth:
        """The notifier's /health: unhealthy until it owns partitions of the alerts topic (it
        delivers nothing before). Safe to call from any thread."""
        anchored = self._anchored
        problems = [] if anchored else [f"not consuming {self._alerts_topic} yet"]
        kafka = self.kafka.problem()
        if kafka is not None:
            problems.append(kafka)
        return ServiceHealth(
            service="notify",
            status="unhealthy" if not anchored else "degraded" if problems else "healthy",
            problems=problems,
            details={
                "targets": [target.name for target in self._targets],
                "partitions": sorted(f"{tp.topic}[{tp.partition}]" for tp in anchored),
                "firing": len(self._firing),
            },
        )

    def _subscribe_once_topic_known(self) -> None:
        """Subscribe when the broker reports the alerts topic. A group member that joins before
        the topic's metadata arrived is assigned nothing and stayed so for minutes (until the
        client's next metadata refresh), so the notifier would silently deliver nothing."""
        waited = 0.0
        while not self._consumer.partitions_for_topic(self._alerts_topic):
            if waited % 10 == 0:
                log.warning("topic %s not found yet (cosnap-metrics topics creates it)", self._alerts_topic)
            if self._stopping.wait(0.5):
                return
            waited += 0.5
        self._consumer.subscribe([self._alerts_topic])

    def _anchor_new_partitions(self, polled: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        """Commit where newly assigned partitions start. A group without offsets starts at the
        end of the topic; committing that point at once means a crash before the first alert
        resumes there, rather than at a later end that skips the alerts in between."""
        new = self._consumer.assignment() - self._anchored
        if not new:
            return
        starts = {
            tp: OffsetAndMetadata(
                polled[tp][0].offset if polled.get(tp) else self._consumer.position(tp), "", -1
            )
            for tp in new
        }
        try:
            self._consumer.commit(starts, timeout_ms=KAFKA_CALL_TIMEOUT_MS)
        except KafkaError as exc:
            log.warning("could not commit the starting offsets, trying again: %r", exc)
            return
        self._anchored = self._anchored | new  # replaced whole: health() reads it from other threads
        log.info("notifier ready on %s", ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(new)))

    def _deliver(
        self, target: AlertTarget, alert: AlertRecord, raw: bytes, webhook_id: str
    ) -> Outcome | None:
        """Try `target` until it takes the record, refuses it for good, runs out of tries, or the
        notifier stops (None: the record is delivered again after the restart)."""
        attempt = 0
        started = time.perf_counter()
        while True:
            attempt += 1
            result = target.send(alert, raw, webhook_id)
            seconds = time.perf_counter() - started
            if result.delivered:
                DELIVERIES.labels(target.name, "delivered").inc()
                DELIVERY_SECONDS.labels(target.name).observe(seconds)
                return Outcome(target.name, "delivered", attempt, seconds)
            if not result.retryable or attempt >= self._policy.max_tries:
                DELIVERIES.labels(target.name, "failed").inc()
                reason = f"alert delivery to {target.name} failed after {attempt} tries: {result.error}"
                return Outcome(target.name, "failed", attempt, seconds, result.error, reason)
            delay = self._policy.delay(attempt, result.retry_after)
            log.warning("%s: %s; try %d in %.1fs", target.name, result.error, attempt + 1, delay)
            if self._stopping.wait(delay):
                log.warning("%s: stopped after %d tries: %s", target.name, attempt, result.error)
                return None
            RETRIES.labels(target.name).inc()

    def _publish_outcomes(self, alert: AlertRecord, outcomes: list[Outcome]) -> None:
        """One `AlertDelivery` per target on the deliveries topic, acknowledged by Kafka before the
        alert record is committed (raises KafkaError if not: the record is delivered again)."""
        finished_at = datetime.now(UTC)
        sent = [
            self._producer.send(
                self._deliveries_topic,
                key=alert.fingerprint.encode(),
                value=outcome.record(alert, finished_at).model_dump_json().encode(),
            )
            for outcome in outcomes
        ]
        for future in sent:
            future.get(timeout=30)

    def _dead_letter(self, record: ConsumerRecord, project: str | None, reason: str) -> None:
        source = f"{record.topic}:{record.partition}:{record.offset}"
        log.error("%s: %s", source, reason, extra={"record": source, "project": project})
        letter = DeadLetter.of_record(
            record.topic, record.partition, record.offset, project=project, reason=reason, raw=record.value
        )
        self._producer.send(self._dead_letter_topic, letter.model_dump_json().encode()).get(timeout=30)

    def handle(self, record: ConsumerRecord) -> bool:
        """Deliver one record to every target, dead-lettering it for each target that did not
        take it. False when the notifier stopped before all targets were done: the record must
        not be committed (it is delivered again after the restart)."""
        raw = record.value
        try:
            alert = AlertRecord.model_validate_json(raw)
        except ValidationError as exc:
            self._dead_letter(record, None, f"notifier could not decode the alert record: {exc}")
            DEAD_LETTERS.labels("undecodable").inc()
            return True
        with self._firing_lock:
            if alert.state == "firing":
                self._firing[alert.fingerprint] = alert
            else:
                self._firing.pop(alert.fingerprint, None)
        webhook_id = delivery_id(alert)
        finished = list(self._pool.map(lambda t: self._deliver(t, alert, raw, webhook_id), self._targets))
        outcomes = [outcome for outcome in finished if outcome is not None]
        if len(outcomes) < len(finished):
            return False
        failures = [outcome.reason for outcome in outcomes if outcome.outcome == "failed"]
        for reason in failures:
            self._dead_letter(record, alert.labels.get("project"), reason)
            DEAD_LETTERS.labels("undelivered").inc()
        self._publish_outcomes(alert, outcomes)
        log.info(
            "%s %s (%s): %d of %d targets",
            alert.state,
            alert.rule,
            alert.fingerprint,
            len(self._targets) - len(failures),
            len(self._targets),
        )
        return True

    def _resend_firing(self, alertmanager: AlertmanagerTarget) -> None:
        """Post all firing alerts to Alertmanager now and then every `resend_s`, one request and
        one try each time (the next round is the retry), so it does not let them expire."""
        while True:
            with self._firing_lock:
                alerts = list(self._firing.values())
                result = alertmanager.send_all(alerts) if alerts else DELIVERED
            if not result.delivered:
                log.warning("resending %d firing alerts failed: %s", len(alerts), result.error)
            if self._stopping.wait(self._resend_s):
                return

    def _commit(self, partition: TopicPartition, next_offset: int) -> None:
        try:
            self._consumer.commit(
                {partition: OffsetAndMetadata(next_offset, "", -1)}, timeout_ms=KAFKA_CALL_TIMEOUT_MS
            )
        except KafkaError as exc:
            # The record was delivered; an uncommitted offset only delivers it again (deduplicated).
            log.warning("offset commit failed, the record will be delivered again: %r", exc)

    def run(self) -> None:
        watch_kafka(self._bootstrap, self.kafka)
        try:
            self._subscribe_once_topic_known()
            if self._alertmanager is not None:
                self._firing = firing_alerts(self._bootstrap, self._alerts_topic, self._stopping)
                log.info("%d alerts firing at start", len(self._firing))
                threading.Thread(
                    target=self._resend_firing, args=(self._alertmanager,), name="resend", daemon=True
                ).start()
            self._consume()
        finally:
            self._stopping.set()
            self._consumer.close(autocommit=False, timeout_ms=KAFKA_CALL_TIMEOUT_MS)
            self._producer.close(timeout=KAFKA_CALL_TIMEOUT_MS / 1000)
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _consume(self) -> None:
        while not self._stopping.is_set():
            try:
                polled = self._consumer.poll(timeout_ms=200, max_records=100)
            except KafkaError as exc:  # the client reconnects by itself; keep asking
                log.warning("poll failed: %r", exc)
                self._stopping.wait(1)
                continue
            self._anchor_new_partitions(polled)
            for tp, records in polled.items():
                for record in records:
                    source = f"{tp.topic}:{tp.partition}:{record.offset}"
                    try:
                        handled = self.handle(record)
                    except Exception:
                        # The notifier stops; the record, not committed, is delivered after restart.
                        context = {"topic": tp.topic, "partition": tp.partition, "offset": record.offset}
                        log.exception("delivering %s failed", source, extra=context)
                        raise
                    if not handled:
                        self.cut_short = True
                        return
                    self._commit(tp, record.offset + 1)


def build_targets(settings: NotifierSettings) -> tuple[list[AlertTarget], AlertmanagerTarget | None]:
    """The targets the settings configure; ValueError for a malformed webhook secret."""
    targets: list[AlertTarget] = []
    alertmanager = None
    if settings.alertmanager_url:
        alertmanager = AlertmanagerTarget(
            settings.alertmanager_url,
            timeout=settings.notify_timeout_s,
            # As Prometheus: an alert not sent again within four resend rounds has ended.
            firing_ttl=timedelta(seconds=4 * settings.notify_resend_s),
            generator_url=settings.alert_generator_url,
        )
        targets.append(alertmanager)
    secret = settings.webhook_secret.get_secret_value()
    targets += [
        WebhookTarget(url, secret, timeout=settings.notify_timeout_s) for url in settings.webhook_urls
    ]
    if settings.validate_webhook_url:
        targets.append(
            ValidationTarget(
                settings.validate_webhook_url, secret, VALIDATE_RULE, timeout=settings.notify_timeout_s
            )
        )
    return targets, alertmanager


def run_notifier(settings: NotifierSettings) -> int:
    """Blocks until SIGTERM or SIGINT; a record being retried then is delivered again after
    restart (and the exit status is EXIT_UNFLUSHED)."""
    try:
        targets, alertmanager = build_targets(settings)
    except ValueError as exc:
        log.error("COSNAP_WEBHOOK_SECRET: %s", exc)
        return 2
    if not targets:
        log.error("nothing to notify: set COSNAP_ALERTMANAGER_URL and/or COSNAP_WEBHOOK_URLS")
        return 2
    topics = settings.topics
    notifier = Notifier(
        bootstrap=settings.kafka_bootstrap,
        group_id=f"{topics.internal}notify",
        alerts_topic=topics.alerts,
        dead_letter_topic=topics.dead_letter,
        deliveries_topic=topics.alert_deliveries,
        targets=targets,
        policy=RetryPolicy(
            settings.notify_max_tries, Backoff(settings.notify_backoff_s, settings.notify_backoff_max_s)
        ),
        alertmanager=alertmanager,
        resend_s=settings.notify_resend_s,
    )

    Shutdown(lambda _signum: notifier.stop(), notifier.held).install()
    serve_status(settings.metrics_host, settings.notify_metrics_port, notifier.health)
    log.info("delivering %s to %s", topics.alerts, ", ".join(target.name for target in targets))
    notifier.run()
    if notifier.cut_short:
        log.error("stopped with %s: it is delivered again at the next start", notifier.held())
        return EXIT_UNFLUSHED
    return 0
