"""Alert delivery beyond the topic: a real Alertmanager (Debian's binary) and signed webhooks
receive the records of `metrics.alerts.v1` from `cosnap-metrics notify`, with retries and a dead
letter; receivers verify with the SDK; `cosnap-metrics alerts tail` prints the state changes."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cosnap_metrics_sdk import WebhookVerificationError, verify_webhook
from cosnap_metrics_sdk.webhooks import (
    WebhookHeaderMissing,
    WebhookSignatureInvalid,
    WebhookTimestampOutOfRange,
    sign,
)
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError

from cosnap_metrics.broker import KafkaBroker
from schemas.records import AlertRecord, DeadLetter, alert_id
from tests.conftest import Pipeline, wait_for
from tests.sinks.notify.alertmanager import running_alertmanager
from tests.sinks.notify.conftest import Receiver

SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()


# -- a real Alertmanager, and webhook receivers ----------------------------------------------------


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    """Debian's `prometheus-alertmanager` on a free loopback port, clustering off; its base URL."""
    config = tmp_path / "alertmanager.yml"
    config.write_text("route:\n  receiver: nowhere\nreceivers:\n  - name: nowhere\n")
    with running_alertmanager(config, tmp_path) as url:
        yield url


# -- records and the notifier ------------------------------------------------------------------


def alert_record(state: str, fingerprint: str, value: float = 4.0) -> AlertRecord:
    now = datetime.now(UTC)
    starts_at = now - timedelta(seconds=30)
    return AlertRecord(
        fingerprint=fingerprint,
        rule="payment_failures",
        state=state,  # type: ignore[arg-type]
        severity="critical",
        labels={
            "alertname": "payment_failures",
            "severity": "critical",
            "project": "cosnap-test",
            "provider": "stripe",
        },
        annotations={
            "summary": "Payment failures: 4 in 5 min (threshold 3)",
            "description": "stripe payments are failing",
            "runbook_url": "https://runbooks.example.com/payments",
            "impact": "about 12.50 USD of revenue per minute at risk",
        },
        value=value,
        threshold=3.0,
        starts_at=starts_at,
        ends_at=now if state == "resolved" else None,
        evaluated_at=now,
        emitted_at=now,
    )


def produce(pipeline: Pipeline, kafka: KafkaBroker, *alerts: AlertRecord) -> list[bytes]:
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all")
    try:
        values = [alert.model_dump_json().encode() for alert in alerts]
        for alert, value in zip(alerts, values, strict=True):
            producer.send(pipeline.topics.alerts, key=alert.fingerprint.encode(), value=value).get(timeout=30)
        return values
    finally:
        producer.close()


def committed(kafka: KafkaBroker, group: str) -> dict[int, int]:
    """The group's committed offsets by partition; none while the group is not known yet."""
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    try:
        offsets = admin.list_group_offsets(group)[group]
    except KafkaError:  # the coordinator of a group that never committed is not found
        return {}
    finally:
        admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items()}


def start_notifier(pipeline: Pipeline, kafka: KafkaBroker, **env: str) -> None:
    """`cosnap-metrics notify` as a process; returns once it committed where it starts on all
    three partitions of the alerts topic (a new group starts at the end)."""
    pipeline.env |= {"COSNAP_NOTIFY_BACKOFF_S": "0.2", "COSNAP_NOTIFY_BACKOFF_MAX_S": "1"} | env
    pipeline.start("notify")
    group = f"{pipeline.topics.internal}notify"
    # A process's start under the whole suite's load takes seconds. (A first join that took minutes
    # was kafka-python leaving a rejoin half done, which GroupConsumer finishes.)
    assert wait_for(lambda: len(committed(kafka, group)) == 3, 90), pipeline.log("notify")


def listed_alerts(alertmanager: str) -> list[dict[str, Any]]:
    """Alertmanager's own list: every alert it holds that has not ended (a resolved one is left out)."""
    response = httpx.get(f"{alertmanager}/api/v2/alerts", timeout=5)
    response.raise_for_status()
    alerts: list[dict[str, Any]] = response.json()
    return alerts


def active_alerts(alertmanager: str) -> list[dict[str, Any]]:
    return [alert for alert in listed_alerts(alertmanager) if alert["status"]["state"] == "active"]


def dead_letters(pipeline: Pipeline, kafka: KafkaBroker) -> list[DeadLetter]:
    consumer = KafkaConsumer(
        pipeline.topics.dead_letter,
        bootstrap_servers=kafka.bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        consumer_timeout_ms=1000,
    )
    try:
        return [DeadLetter.model_validate_json(record.value) for record in consumer]
    finally:
        consumer.close()


# -- verify_webhook, as a receiver uses it ----------------------------------------------------


def signed_headers(body: bytes, timestamp: int, webhook_id: str = "alert_abc_1_firing") -> dict[str, str]:
    return {
        "Webhook-Id": webhook_id,
        "Webhook-Timestamp": str(timestamp),
        "Webhook-Signature": sign(SECRET, webhook_id, timestamp, body),
    }


def test_verify_webhook_accepts_a_genuine_delivery_and_refuses_tampering_and_replays() -> None:
    body = alert_record("firing", "f" * 16).model_dump_json().encode()
    now = time.time()
    headers = signed_headers(body, int(now))

    assert verify_webhook(SECRET, headers, body, now=now)["fingerprint"] == "f" * 16
    assert verify_webhook(SECRET, headers, body.decode(), now=now)["state"] == "firing"

    tampered = body.replace(b'"critical"', b'"info"', 1)
    with pytest.raises(WebhookSignatureInvalid):
        verify_webhook(SECRET, headers, tampered, now=now)
    with pytest.raises(WebhookSignatureInvalid):  # another id, same signature
        verify_webhook(SECRET, headers | {"Webhook-Id": "alert_other"}, body, now=now)
    other_secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    with pytest.raises(WebhookSignatureInvalid):
        verify_webhook(other_secret, headers, body, now=now)

    # A captured delivery replayed 5 minutes and 1 second later: refused, although well signed.
    with pytest.raises(WebhookTimestampOutOfRange, match="old"):
        verify_webhook(SECRET, headers, body, now=now + 301)
    with pytest.raises(WebhookTimestampOutOfRange, match="future"):
        verify_webhook(SECRET, headers, body, now=now - 301)
    assert verify_webhook(SECRET, headers, body, now=now + 299)["state"] == "firing"

    for name in ("Webhook-Id", "Webhook-Timestamp", "Webhook-Signature"):
        incomplete = {key: value for key, value in headers.items() if key != name}
        with pytest.raises(WebhookHeaderMissing, match=name.lower()):
            verify_webhook(SECRET, incomplete, body, now=now)
    with pytest.raises(WebhookTimestampOutOfRange, match="unix seconds"):
        verify_webhook(SECRET, headers | {"Webhook-Timestamp": "yesterday"}, body, now=now)
    assert issubclass(WebhookSignatureInvalid, WebhookVerificationError)


def test_verify_webhook_accepts_any_of_several_signatures_during_a_secret_rotation() -> None:
    body = b'{"state":"firing"}'
    now = int(time.time())
    old_secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    headers = signed_headers(body, now)
    headers["Webhook-Signature"] = (
        f"v1a,ignoredasymmetricsignature {sign(old_secret, 'alert_abc_1_firing', now, body)} "
        f"{headers['Webhook-Signature']}"
    )
    assert verify_webhook(SECRET, headers, body, now=now) == {"state": "firing"}
    assert verify_webhook(old_secret, headers, body, now=now) == {"state": "firing"}


# -- the notifier, end to end ----------------------------------------------------------------


@pytest.mark.kafka
def test_alertmanager_and_a_webhook_get_the_firing_and_the_resolved_alert(
    pipeline: Pipeline, kafka: KafkaBroker, alertmanager: str, receivers: list[Receiver]
) -> None:
    hook = Receiver()
    receivers.append(hook)
    start_notifier(
        pipeline,
        kafka,
        COSNAP_ALERTMANAGER_URL=alertmanager,
        COSNAP_WEBHOOK_URLS=hook.url,
        COSNAP_WEBHOOK_SECRET=SECRET,
    )
    fingerprint = uuid.uuid4().hex[:16]
    firing = alert_record("firing", fingerprint)
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all")
    producer.send(pipeline.topics.alerts, key=fingerprint.encode(), value=b'{"v": 1, "state": "on fire"}')
    producer.close()  # a poison record ahead of the alert: dead-lettered, and it blocks nothing
    [firing_json] = produce(pipeline, kafka, firing)

    listed = wait_for(lambda: active_alerts(alertmanager), 15)
    assert [alert["labels"] for alert in listed] == [firing.labels], pipeline.log("notify")
    [shown] = listed
    assert shown["annotations"]["summary"] == firing.annotations["summary"]
    assert shown["annotations"]["runbook_url"] == firing.annotations["runbook_url"]
    assert shown["annotations"]["value"] == "4"
    assert shown["annotations"]["threshold"] == "3"
    assert datetime.fromisoformat(shown["startsAt"]) == firing.starts_at.replace(
        microsecond=firing.starts_at.microsecond // 1000 * 1000
    )
    assert datetime.fromisoformat(shown["endsAt"]) > datetime.now(UTC)  # kept alive by the notifier

    assert wait_for(lambda: len(hook.deliveries) == 1, 10), pipeline.log("notify")
    [delivery] = hook.deliveries
    assert delivery.body == firing_json
    assert verify_webhook(SECRET, delivery.headers, delivery.body) == json.loads(firing_json)
    assert delivery.headers["content-type"] == "application/json"

    resolved = alert_record("resolved", fingerprint, value=1.0)
    produce(pipeline, kafka, resolved)
    assert wait_for(lambda: not listed_alerts(alertmanager), 15), pipeline.log("notify")
    assert wait_for(lambda: len(hook.deliveries) == 2, 10), pipeline.log("notify")
    states = [verify_webhook(SECRET, d.headers, d.body)["state"] for d in hook.deliveries]
    assert states == ["firing", "resolved"]
    # Two state changes, two ids: a receiver deduplicating by webhook-id keeps both.
    assert hook.deliveries[0].headers["webhook-id"] != hook.deliveries[1].headers["webhook-id"]
    [poison] = dead_letters(pipeline, kafka)
    assert poison.reason.startswith("notifier could not decode the alert record")
    assert poison.raw == '{"v": 1, "state": "on fire"}'


@pytest.mark.kafka
def test_alertmanager_keeps_an_alert_that_fired_before_the_notifier_started_while_it_fires(
    pipeline: Pipeline, kafka: KafkaBroker, alertmanager: str
) -> None:
    still_firing = alert_record("firing", uuid.uuid4().hex[:16])
    over = alert_record("firing", uuid.uuid4().hex[:16])
    produce(pipeline, kafka, still_firing, over, alert_record("resolved", over.fingerprint))

    # Alerts are sent with endsAt = now + 4 resend rounds (4 s here) and sent again every round.
    start_notifier(pipeline, kafka, COSNAP_ALERTMANAGER_URL=alertmanager, COSNAP_NOTIFY_RESEND_S="1")
    listed = wait_for(lambda: active_alerts(alertmanager), 15)
    assert [alert["labels"] for alert in listed] == [still_firing.labels], pipeline.log("notify")
    first_end = datetime.fromisoformat(listed[0]["endsAt"])
    assert first_end - datetime.now(UTC) < timedelta(seconds=5)

    time.sleep(6)  # past that first endsAt: without the resends Alertmanager would have resolved it
    [kept] = active_alerts(alertmanager)
    assert kept["labels"] == still_firing.labels
    assert datetime.fromisoformat(kept["endsAt"]) > first_end


@pytest.mark.kafka
def test_retries_honour_retry_after_under_one_webhook_id_and_the_last_failure_is_dead_lettered(
    pipeline: Pipeline, kafka: KafkaBroker, receivers: list[Receiver]
) -> None:
    flaky = Receiver(503, 500, retry_after="1")
    broken = Receiver(forever=500)
    receivers += [flaky, broken]
    start_notifier(
        pipeline,
        kafka,
        COSNAP_WEBHOOK_URLS=f"{flaky.url},{broken.url}",
        COSNAP_WEBHOOK_SECRET=SECRET,
        COSNAP_NOTIFY_MAX_TRIES="3",
    )
    firing = alert_record("firing", uuid.uuid4().hex[:16])
    [firing_json] = produce(pipeline, kafka, firing)

    letters = wait_for(lambda: dead_letters(pipeline, kafka), 20)
    assert len(flaky.deliveries) == 3, pipeline.log("notify")
    assert len({d.headers["webhook-id"] for d in flaky.deliveries}) == 1
    for delivery in flaky.deliveries:  # every attempt is signed for its own timestamp
        assert verify_webhook(SECRET, delivery.headers, delivery.body)["fingerprint"] == firing.fingerprint
    # The target's Retry-After (1 s) replaced the 0.2 s backoff.
    assert flaky.deliveries[1].at - flaky.deliveries[0].at >= 0.9
    assert flaky.deliveries[2].at - flaky.deliveries[1].at >= 0.9

    assert len(broken.deliveries) == 3
    [letter] = letters
    assert letter.project == "cosnap-test"
    assert f"webhook {broken.url}" in letter.reason
    assert "after 3 tries: HTTP 500" in letter.reason
    assert letter.raw == firing_json.decode()
    # Delivered to one target and dead-lettered for the other: the record is done and committed.
    group = f"{pipeline.topics.internal}notify"
    assert wait_for(lambda: sum(committed(kafka, group).values()) == 1, 10)


@pytest.mark.kafka
def test_a_record_still_being_retried_at_shutdown_is_delivered_after_the_restart(
    pipeline: Pipeline, kafka: KafkaBroker, receivers: list[Receiver]
) -> None:
    hook = Receiver(forever=503)
    receivers.append(hook)
    start_notifier(
        pipeline,
        kafka,
        COSNAP_WEBHOOK_URLS=hook.url,
        COSNAP_WEBHOOK_SECRET=SECRET,
        COSNAP_NOTIFY_MAX_TRIES="100",
    )
    firing = alert_record("firing", uuid.uuid4().hex[:16])
    produce(pipeline, kafka, firing)
    assert wait_for(lambda: len(hook.deliveries) >= 2, 10), pipeline.log("notify")
    pipeline.stop("notify")  # SIGTERM while the record waits for its next try
    group = f"{pipeline.topics.internal}notify"
    assert sum(committed(kafka, group).values()) == 0
    assert dead_letters(pipeline, kafka) == []

    tries = len(hook.deliveries)
    receiver_ok = Receiver()
    receivers.append(receiver_ok)
    start_notifier(pipeline, kafka, COSNAP_WEBHOOK_URLS=receiver_ok.url)
    assert wait_for(lambda: receiver_ok.deliveries, 15), pipeline.log("notify")
    [delivery] = receiver_ok.deliveries
    assert delivery.headers["webhook-id"] == hook.deliveries[0].headers["webhook-id"]
    assert verify_webhook(SECRET, delivery.headers, delivery.body)["fingerprint"] == firing.fingerprint
    assert wait_for(lambda: sum(committed(kafka, group).values()) == 1, 10)
    assert len(hook.deliveries) == tries


# -- alerts tail ----------------------------------------------------------------------------


@pytest.mark.kafka
def test_alerts_tail_prints_each_state_change(pipeline: Pipeline, kafka: KafkaBroker) -> None:
    fingerprint = uuid.uuid4().hex[:16]
    firing, resolved = alert_record("firing", fingerprint), alert_record("resolved", fingerprint, 1.0)
    values = produce(pipeline, kafka, firing, resolved)
    command = [sys.executable, "-m", "cosnap_metrics.cli", "alerts", "tail", "--from-beginning", "--max", "2"]

    shown = subprocess.run(command, env=pipeline.env, capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0] == (
        f"{firing.starts_at:%Y-%m-%dT%H:%M:%SZ}  FIRING    critical  payment_failures"
        f"  {alert_id(fingerprint, firing.starts_at)}  {{project=cosnap-test provider=stripe}}"
        "  value 4 (threshold 3)"
        "  Payment failures: 4 in 5 min (threshold 3)"
    )
    assert lines[1].startswith(f"{resolved.ends_at:%Y-%m-%dT%H:%M:%SZ}  RESOLVED  critical  payment_failures")
    assert "value 1 (threshold 3)" in lines[1]

    raw = subprocess.run(
        [*command, "--json"], env=pipeline.env, capture_output=True, text=True, timeout=30, check=True
    )
    assert [json.loads(line) for line in raw.stdout.splitlines()] == [json.loads(v) for v in values]
