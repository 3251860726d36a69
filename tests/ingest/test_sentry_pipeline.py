"""Sentry's alerts through the whole pipeline: a signed metric alert posted to the ingest is in
`metrics.alerts` with the revenue at stake read from `metrics.events`, and `cosnap-metrics notify`
hands it to a real Alertmanager (Debian's binary) running the repository's configuration as
`cosnap-metrics alertmanager config` renders it, whose routes take a critical alert to Slack
critical and a high one to Slack high; a resolution resolves both."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from cosnap_metrics.alertmanager_config import write_config
from cosnap_metrics.broker import KafkaBroker
from plumbing.keys import KeyStore
from tests.conftest import Pipeline, free_port, make_pipeline, wait_for
from tests.ingest.test_sentry_hooks import PROJECT, metric_alert
from tests.sinks.notify.alertmanager import running_alertmanager

pytestmark = [pytest.mark.kafka, pytest.mark.e2e]


class Receiver:
    """A webhook receiver of Alertmanager: the alerts of every notification it gets."""

    def __init__(self) -> None:
        self.alerts: list[dict[str, Any]] = []
        received = self.alerts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                received.extend(body["alerts"])
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                del format, args

        self._server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}/"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def states(self) -> list[tuple[str, str]]:
        return [(alert["labels"]["severity"], alert["status"]) for alert in self.alerts]

    def close(self) -> None:
        self._server.shutdown()


@pytest.fixture
def receivers() -> Iterator[dict[str, Receiver]]:
    made = {"slack-critical": Receiver(), "slack-high": Receiver()}
    yield made
    for receiver in made.values():
        receiver.close()


@pytest.fixture
def alertmanager(tmp_path: Path, receivers: dict[str, Receiver]) -> Iterator[str]:
    """The repository's configuration rendered with its waits shortened, its Slack critical and
    Slack high receivers given webhooks to `receivers` (which see the labels); Debian's
    Alertmanager on a free loopback port."""
    path = tmp_path / "alertmanager.yml"
    write_config(path, {"COSNAP_ALERT_GROUP_WAIT": "1s", "COSNAP_ALERT_GROUP_INTERVAL": "1s"})
    config = yaml.safe_load(path.read_text())
    for receiver in config["receivers"]:
        if receiver["name"] in receivers:
            receiver["webhook_configs"] = [{"url": receivers[receiver["name"]].url, "send_resolved": True}]
    path.write_text(yaml.safe_dump(config))
    with running_alertmanager(path, tmp_path) as url:
        yield url


@pytest.fixture
def sentry_pipeline(kafka: KafkaBroker, tmp_path: Path, alertmanager: str) -> Iterator[tuple[Pipeline, str]]:
    running = make_pipeline(kafka, tmp_path)
    secret = KeyStore(running.data_dir / "write-keys.json").add_sentry_secret(PROJECT)
    running.env |= {"COSNAP_ALERTMANAGER_URL": alertmanager, "COSNAP_NOTIFY_BACKOFF_S": "0.2"}
    running.start("sink", "ingest", "notify")
    yield running, secret
    running.close()


def post_hook(p: Pipeline, secret: str, body: dict[str, Any]) -> None:
    raw = json.dumps(body).encode()
    headers = {
        "Content-Type": "application/json",
        "Sentry-Hook-Resource": "metric_alert",
        "Sentry-Hook-Timestamp": str(int(time.time())),
        "Sentry-Hook-Signature": hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest(),
    }
    response = httpx.post(
        f"{p.ingest_url}/v1/integrations/sentry/{PROJECT}", content=raw, headers=headers, timeout=30
    )
    assert response.status_code == 200, response.text


def test_a_sentry_alert_is_stored_with_its_impact_and_routed_by_severity(
    sentry_pipeline: tuple[Pipeline, str], receivers: dict[str, Receiver]
) -> None:
    p, secret = sentry_pipeline
    p.post([{"type": "revenue", "name": "order_completed", "amount": "90", "currency": "USD"}])
    assert wait_for(lambda: p.query("SELECT count() FROM metrics.events")[0][0] == 1, 120, 0.5)

    post_hook(p, secret, metric_alert("critical"))
    assert wait_for(lambda: ("critical", "firing") in receivers["slack-critical"].states(), 120, 0.5)
    sql = (
        "SELECT state, severity, labels['alertname'], labels['source'], annotations['impact'] "
        "FROM metrics.alerts FINAL WHERE project = 'cosnap-test'"
    )
    stored = wait_for(lambda: p.query(sql), 60, 0.5)
    assert stored[0][:4] == ["firing", "critical", "Too many errors", "sentry"]
    assert stored[0][4] == "revenue at stake (from the last 1h): 1.50 USD/min, 45.00 USD over 30m"

    # Sentry's warning (no count in its description, no category): high, and to Slack high.
    post_hook(p, secret, metric_alert("warning"))
    assert wait_for(lambda: ("high", "firing") in receivers["slack-high"].states(), 120, 0.5)
    post_hook(p, secret, metric_alert("resolved"))
    assert wait_for(lambda: ("high", "resolved") in receivers["slack-high"].states(), 120, 0.5)
    assert wait_for(lambda: ("critical", "resolved") in receivers["slack-critical"].states(), 120, 0.5)
    assert all(severity == "critical" for severity, _ in receivers["slack-critical"].states())
    assert all(severity == "high" for severity, _ in receivers["slack-high"].states())
