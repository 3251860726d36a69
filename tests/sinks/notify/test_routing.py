"""Routing by severity and channel, end to end: events posted to the ingest fire the default
rules in the streams worker, the notifier posts the alerts to a real Alertmanager (Debian's
binary) running the shipped configuration as `cosnap-metrics alertmanager config` renders it,
and Alertmanager delivers to Slack-compatible webhook receivers, an SMTP server (aiosmtpd) and a
PagerDuty Events v2 receiver, all local. Also: the rendered configuration passes `amtool
check-config`, and leaves out the integrations whose secrets are not set."""

from __future__ import annotations

import email
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import Message
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from cosnap_metrics.alertmanager_config import ConfigError, render, write_config
from cosnap_metrics.broker import KafkaBroker
from plumbing.keys import KeyStore
from schemas.records import alert_fingerprint
from schemas.rules import DEFAULT_RULES
from tests.conftest import Pipeline, free_port, wait_for
from tests.ingest.test_sentry_hooks import metric_alert, signed_post
from tests.sinks.notify.alertmanager import running_alertmanager
from tests.sinks.notify.conftest import Receiver
from tests.sinks.notify.test_delivery import alert_record, listed_alerts, produce, start_notifier

SLACK_CHANNELS = ("slack-critical", "slack-high", "slack-monitoring")
MAILBOXES = {"email-oncall": "oncall@cosnap.test", "email-team": "team@cosnap.test"}
MAILBOXES["email-security"] = "security@cosnap.test"


class Mailbox:
    """An SMTP server on 127.0.0.1 (aiosmtpd) that keeps every message it takes."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], Message]] = []
        self._lock = threading.Lock()
        mailbox = self

        class Handler:
            async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
                content = envelope.content if isinstance(envelope.content, bytes) else b""
                with mailbox._lock:
                    mailbox.messages.append((list(envelope.rcpt_tos), email.message_from_bytes(content)))
                return "250 OK"

        self.port = free_port()
        self._controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def subjects(self, to: str) -> list[str]:
        with self._lock:
            return [str(message["Subject"]) for rcpt, message in self.messages if to in rcpt]

    def close(self) -> None:
        self._controller.stop()


def environment(slack: dict[str, Receiver], pager: Receiver, mailbox: Mailbox) -> dict[str, str]:
    """The variables of a full configuration, every channel pointing at a local receiver."""
    env = {f"COSNAP_{name.upper().replace('-', '_')}_URL": slack[name].url for name in SLACK_CHANNELS}
    env |= {f"COSNAP_{name.upper().replace('-', '_')}": address for name, address in MAILBOXES.items()}
    return env | {
        "COSNAP_SMTP_SMARTHOST": f"127.0.0.1:{mailbox.port}",
        "COSNAP_SMTP_FROM": "alertmanager@cosnap.test",
        "COSNAP_SMTP_REQUIRE_TLS": "false",
        "COSNAP_PAGERDUTY_ROUTING_KEY": "R0UT1NGKEY" + uuid.uuid4().hex[:22],
        "COSNAP_PAGERDUTY_URL": pager.url,
        "COSNAP_ALERT_GROUP_WAIT": "1s",
        "COSNAP_ALERT_GROUP_INTERVAL": "1s",
    }


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    server = Mailbox()
    yield server
    server.close()


@dataclass
class Channels:
    """Every channel's local receiver, the variables naming them, and the configuration rendered
    with them."""

    slack: dict[str, Receiver]
    pager: Receiver
    mailbox: Mailbox
    env: dict[str, str]
    config: Path


@pytest.fixture
def channels(tmp_path: Path, receivers: list[Receiver], mailbox: Mailbox) -> Channels:
    slack = {name: Receiver() for name in SLACK_CHANNELS}
    pager = Receiver()
    receivers += [*slack.values(), pager]
    env = environment(slack, pager, mailbox)
    config = tmp_path / "alertmanager" / "alertmanager.yml"
    config.parent.mkdir()
    write_config(config, env)
    return Channels(slack, pager, mailbox, env, config)


def amtool_check(config: Path) -> subprocess.CompletedProcess[str]:
    amtool = shutil.which("amtool")
    if amtool is None:
        pytest.fail("amtool is not installed; `make test` installs Debian's prometheus-alertmanager")
    return subprocess.run([amtool, "check-config", str(config)], capture_output=True, text=True, timeout=60)


def test_the_rendered_configuration_passes_amtool_and_leaves_out_channels_without_secrets(
    tmp_path: Path, channels: Channels
) -> None:
    env, full = channels.env, channels.config
    assert write_config(full, env).left_out == []
    checked = amtool_check(full)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert full.stat().st_mode & 0o777 == 0o600  # it holds the secrets
    assert env["COSNAP_PAGERDUTY_ROUTING_KEY"] in full.read_text()
    assert (full.parent / "cosnap.tmpl").exists()

    # Slack only: the e-mail and paging integrations are left out, and said so; still valid.
    slack_only = {key: value for key, value in env.items() if "SLACK" in key}
    partial = tmp_path / "partial" / "alertmanager.yml"
    partial.parent.mkdir()
    rendered = write_config(partial, slack_only)
    assert rendered.left_out == [
        "receiver phone-oncall: pagerduty_configs left out, COSNAP_PAGERDUTY_ROUTING_KEY is not set",
        "receiver email-oncall: email_configs left out, COSNAP_EMAIL_ONCALL is not set",
        "receiver email-team: email_configs left out, COSNAP_EMAIL_TEAM is not set",
        "receiver email-security: email_configs left out, COSNAP_EMAIL_SECURITY is not set",
    ]
    assert amtool_check(partial).returncode == 0
    config = yaml.safe_load(partial.read_text())
    assert config["route"]["group_wait"] == "10s"  # the defaults of the placeholders
    receivers_by_name = {receiver["name"]: receiver for receiver in config["receivers"]}
    assert receivers_by_name["email-oncall"] == {"name": "email-oncall"}
    assert receivers_by_name["slack-high"]["slack_configs"][0]["send_resolved"] is True

    # A variable outside any integration cannot be left out: an error naming it.
    template = tmp_path / "template.yml"
    template.write_text("route:\n  receiver: ${COSNAP_TEST_RECEIVER}\nreceivers: []\n")
    with pytest.raises(ConfigError, match="COSNAP_TEST_RECEIVER must be set"):
        render({}, template)


def now_event(**fields: Any) -> dict[str, Any]:
    return {"event_id": uuid.uuid4().hex, "timestamp": datetime.now(UTC).isoformat()} | fields


def payment_failure() -> dict[str, Any]:
    tags = {"provider": "stripe", "category": "payment", "status": "failed"}
    return now_event(type="performance", metric="payment.latency", value=640.0, unit="ms", tags=tags)


def slow_request() -> dict[str, Any]:
    tags = {"route": "/v1/photos"}
    return now_event(type="performance", metric="api.latency", value=6500.0, unit="ms", tags=tags)


def short_rules(tmp_path: Path) -> Path:
    """The default rules, their severities and channels as shipped, with 30-second windows for
    payment failures and slow requests (and 2 slow requests for the latter, not 50), so that an
    episode fires and resolves within a minute."""
    document = yaml.safe_load(DEFAULT_RULES.read_text())
    for rule in document["rules"]:
        if rule["name"] in ("payment_failures", "slow_transactions"):
            rule["window"] = "30s"
        if rule["name"] == "slow_transactions":
            rule["threshold"] = 1
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def slack_texts(receiver: Receiver) -> list[str]:
    """Each Slack message's title (Alertmanager's attachment), in order of arrival."""
    return [orjson.loads(d.body)["attachments"][0]["title"] for d in receiver.deliveries]


def pages(pager: Receiver) -> list[tuple[str, str]]:
    """Each PagerDuty Events v2 event: its action and summary."""
    events = [orjson.loads(d.body) for d in pager.deliveries]
    return [(event["event_action"], event["payload"]["summary"]) for event in events]


@pytest.mark.kafka
@pytest.mark.e2e
def test_alerts_reach_the_channels_of_their_rule_and_page_only_above_the_revenue_at_stake(
    pipeline: Pipeline, kafka: KafkaBroker, tmp_path: Path, channels: Channels
) -> None:
    slack, pager, mailbox, env, config = (
        channels.slack, channels.pager, channels.mailbox, channels.env, channels.config
    )  # fmt: skip
    pipeline.env |= {
        "COSNAP_RULES_FILE": str(short_rules(tmp_path)),
        "COSNAP_WATERMARK_IDLE_S": "2",
        "COSNAP_CHECKPOINT_S": "1",
    }
    with running_alertmanager(config, tmp_path) as alertmanager:
        start_notifier(pipeline, kafka, COSNAP_ALERTMANAGER_URL=alertmanager, COSNAP_NOTIFY_RESEND_S="5")
        pipeline.start("sink", "streams", "ingest")
        assert wait_for(lambda: "[^Worker]: Ready" in pipeline.log("streams"), timeout=90)

        # 1. No revenue: payment failures go to Slack critical and the on-call mailbox, no page;
        #    slow requests to Slack monitoring only.
        pipeline.post([payment_failure() for _ in range(3)] + [slow_request() for _ in range(2)])
        critical, monitoring = slack["slack-critical"], slack["slack-monitoring"]
        assert wait_for(lambda: critical.deliveries and monitoring.deliveries, 60), pipeline.log("notify")
        assert wait_for(lambda: mailbox.subjects(MAILBOXES["email-oncall"]), 30)
        [fired] = slack_texts(critical)
        assert fired.startswith("[FIRING:1] payment_failures (critical, ")
        assert slack_texts(monitoring)[0].startswith("[FIRING:1] slow_transactions (medium, ")
        assert mailbox.subjects(MAILBOXES["email-oncall"])[0].startswith("[FIRING:1] payment_failures")

        # Resolved notifications follow once the failures leave the 30-second window.
        assert wait_for(
            lambda: (
                any(t.startswith("[RESOLVED]") for t in slack_texts(critical))
                and any(t.startswith("[RESOLVED]") for t in slack_texts(monitoring))
                and any(s.startswith("[RESOLVED]") for s in mailbox.subjects(MAILBOXES["email-oncall"]))
            ),
            120,
        ), pipeline.log("notify")
        assert pager.deliveries == []  # 0 at stake: no page

        # 2. 2,100 USD in the last hour (35 USD/min, 1,050 over the expected 30 minutes, above
        #    1,000): the next payment failures page too, and the page resolves with them.
        pipeline.post([now_event(type="revenue", name="pro.yearly", amount="2100.00", currency="USD")])
        pipeline.post([payment_failure() for _ in range(3)])
        assert wait_for(lambda: pages(pager), 60), pipeline.log("notify")
        assert pages(pager)[0][0] == "trigger"
        assert pages(pager)[0][1].startswith("[FIRING:1] payment_failures (critical, ")
        assert orjson.loads(pager.deliveries[0].body)["routing_key"] == env["COSNAP_PAGERDUTY_ROUTING_KEY"]
        resolved = wait_for(lambda: [action for action, _ in pages(pager)][-1:] == ["resolve"], 120)
        assert resolved, pipeline.log("notify")
        assert wait_for(lambda: len(slack_texts(critical)) == 4, 30)  # both episodes, fired and resolved

        # Nothing went where it does not belong: slow requests never reached Slack critical,
        # the e-mails, or the pager; payment failures never reached Slack monitoring or high.
        assert all("payment_failures" in text for text in slack_texts(critical))
        assert all("slow_transactions" in text for text in slack_texts(monitoring))
        assert slack["slack-high"].deliveries == []
        assert all("payment_failures" in subject for subject in mailbox.subjects(MAILBOXES["email-oncall"]))
        assert mailbox.subjects(MAILBOXES["email-team"]) == []
        assert mailbox.subjects(MAILBOXES["email-security"]) == []
        assert all("payment_failures" in summary for _, summary in pages(pager))


@pytest.mark.kafka
def test_a_resolution_that_cannot_know_the_page_label_still_ends_the_paged_alert(
    pipeline: Pipeline, kafka: KafkaBroker, tmp_path: Path, channels: Channels
) -> None:
    """Sentry's resolutions do not say whether their alert paged; the notifier posts a resolution
    with the labels its alert was posted firing with, so Alertmanager ends the paged alert."""
    pager, config = channels.pager, channels.config
    named = {"alertname": "Too many errors", "severity": "critical", "project": "cosnap-test"}
    named["source"] = "sentry"
    routed = {"channels": "slack-critical,email-oncall,phone-oncall"}
    fingerprint = alert_fingerprint(named)
    firing = alert_record("firing", fingerprint).model_copy(
        update={"rule": "sentry", "labels": named | routed | {"page": "true"}}
    )
    resolved = alert_record("resolved", fingerprint).model_copy(
        update={"rule": "sentry", "labels": named | routed}
    )
    with running_alertmanager(config, tmp_path) as alertmanager:
        start_notifier(pipeline, kafka, COSNAP_ALERTMANAGER_URL=alertmanager)
        produce(pipeline, kafka, firing)
        assert wait_for(lambda: pages(pager), 60), pipeline.log("notify")
        produce(pipeline, kafka, resolved)
        assert wait_for(lambda: [action for action, _ in pages(pager)] == ["trigger", "resolve"], 60)
        assert listed_alerts(alertmanager) == []  # no paged alert left behind


@pytest.mark.kafka
def test_a_sentry_metric_alert_tagged_payment_arrives_as_critical_in_slack_critical(
    pipeline: Pipeline, kafka: KafkaBroker, tmp_path: Path, channels: Channels
) -> None:
    """Sentry's warning, 3 errors, on a rule filtering `category:payment`: critical by the
    monitoring guide, so Slack critical and the on-call mailbox, not Slack high."""
    slack, pager, mailbox, config = channels.slack, channels.pager, channels.mailbox, channels.config
    secret = KeyStore(pipeline.data_dir / "write-keys.json").add_sentry_secret("cosnap-test")
    with running_alertmanager(config, tmp_path) as alertmanager:
        start_notifier(pipeline, kafka, COSNAP_ALERTMANAGER_URL=alertmanager)
        pipeline.start("ingest")
        body = metric_alert("warning", count=3, query="category:payment level:error")
        response = signed_post(pipeline.ingest_url, secret, "metric_alert", body, project="cosnap-test")
        assert response.status_code == 200 and response.json()["received"] == "alert", response.text
        critical = slack["slack-critical"]
        assert wait_for(lambda: critical.deliveries, 60), pipeline.log("notify")
        assert slack_texts(critical)[0] == "[FIRING:1] Too many errors (critical, cosnap-test)"
        assert wait_for(lambda: mailbox.subjects(MAILBOXES["email-oncall"]), 30)
        assert slack["slack-high"].deliveries == [] and pager.deliveries == []
