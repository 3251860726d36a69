"""Sentry's integration webhooks on the ingest app with a fake producer (no Kafka), with payloads
shaped as Sentry documents them (tests/ingest/sentry_payloads: its examples, times made recent):
the signature and the timestamp are checked; metric and issue alerts become alert records,
errors and new issues performance events of `sentry.errors` / `sentry.issues`."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from cosnap_metrics.cli import main
from plumbing.keys import KeyStore
from schemas.records import AlertRecord, alert_fingerprint
from tests.ingest.fakes import ServedIngest

PAYLOADS = Path(__file__).parent / "sentry_payloads"
PROJECT = "cosnap-test"


def payload(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((PAYLOADS / f"{name}.json").read_text())
    return loaded


def recent(minutes: float = 1) -> str:
    return (datetime.now(UTC) - timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServedIngest, str]]:
    ingest = ServedIngest(tmp_path_factory.mktemp("sentry") / "data")
    secret = KeyStore(ingest.data_dir / "write-keys.json").add_sentry_secret(PROJECT)
    ingest.start()
    yield ingest, secret
    ingest.stop()


def hook(
    api: tuple[ServedIngest, str],
    resource: str,
    body: dict[str, Any],
    *,
    secret: str | None = None,
    timestamp: float | None = None,
    project: str = PROJECT,
) -> httpx.Response:
    ingest, own_secret = api
    response = signed_post(
        ingest.ingest_url, secret or own_secret, resource, body, timestamp=timestamp, project=project
    )
    assert response.status_code < 500, response.text
    return response


def signed_post(
    ingest_url: str,
    secret: str,
    resource: str,
    body: dict[str, Any],
    *,
    timestamp: float | None = None,
    project: str = PROJECT,
) -> httpx.Response:
    """Post as Sentry does: the HMAC-SHA256 hex of the raw body with the client secret."""
    raw = json.dumps(body).encode()
    signature = hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
    headers = {
        "Content-Type": "application/json",
        "Request-ID": "6b3b6c8a-2a7f-4c69-a0b3-7a0e2f6c1d11",
        "Sentry-Hook-Resource": resource,
        "Sentry-Hook-Timestamp": str(int(time.time() if timestamp is None else timestamp)),
        "Sentry-Hook-Signature": signature,
    }
    return httpx.post(
        f"{ingest_url}/v1/integrations/sentry/{project}", content=raw, headers=headers, timeout=30
    )


def alerts_of(api: tuple[ServedIngest, str], response: httpx.Response) -> list[AlertRecord]:
    ingest, _ = api
    request_id = response.headers["x-request-id"].encode()
    return [
        AlertRecord.model_validate_json(record.value)
        for record in ingest.producer.records
        if record.topic == ingest.topics.alerts and request_id in dict(record.headers)["cosnap-request-ids"]
    ]


def events_of(api: tuple[ServedIngest, str], response: httpx.Response) -> list[dict[str, Any]]:
    ingest, _ = api
    request_id = response.headers["x-request-id"]
    return [
        event
        for record in ingest.producer.records
        if record.topic == ingest.topics.events
        for event in orjson.loads(record.value)["events"]
        if event["request_id"] == request_id
    ]


def metric_alert(action: str, count: int | None = None, query: str = "level:error") -> dict[str, Any]:
    """Sentry's example as Sentry sends it for `action`: `count` events in its description (as
    Sentry writes it: "1000 events in the last 10 minutes"; None: no count), `query` its rule's filter."""
    body = copy.deepcopy(payload("metric_alert"))
    body["action"] = action
    body["data"]["metric_alert"]["date_started"] = recent(3)
    body["data"]["metric_alert"]["alert_rule"]["query"] = query
    body["data"]["description_title"] = f"{action.title()}: Too many errors"
    body["data"]["description_text"] = (
        "Filter: level:error" if count is None else f"{count} events in the last 10 minutes\nFilter: {query}"
    )
    if action == "resolved":
        body["data"]["metric_alert"]["date_closed"] = recent(0)
    return body


# -- who may post -------------------------------------------------------------------------------------


def test_a_wrong_signature_is_a_401(api: tuple[ServedIngest, str]) -> None:
    response = hook(api, "metric_alert", metric_alert("critical"), secret="not-the-secret")  # noqa: S106
    assert response.status_code == 401
    assert "Sentry-Hook-Signature" in response.json()["detail"]


def test_a_project_without_the_secret_is_a_401(api: tuple[ServedIngest, str]) -> None:
    assert hook(api, "metric_alert", metric_alert("critical"), project="other").status_code == 401


@pytest.mark.parametrize("age_s", [-400, 400, 10_000_000])
def test_a_stale_timestamp_is_a_401(api: tuple[ServedIngest, str], age_s: float) -> None:
    response = hook(api, "metric_alert", metric_alert("critical"), timestamp=time.time() - age_s)
    assert response.status_code == 401
    assert "Sentry-Hook-Timestamp" in response.json()["detail"]


def test_a_signed_body_that_is_not_json_is_a_400(api: tuple[ServedIngest, str]) -> None:
    ingest, secret = api
    raw = b"{not json"
    headers = {
        "Sentry-Hook-Resource": "issue",
        "Sentry-Hook-Timestamp": str(int(time.time())),
        "Sentry-Hook-Signature": hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest(),
    }
    response = httpx.post(
        f"{ingest.ingest_url}/v1/integrations/sentry/{PROJECT}", content=raw, headers=headers
    )
    assert response.status_code == 400


# -- metric alerts ----------------------------------------------------------------------------------


def test_a_critical_metric_alert_fires_with_labels_link_and_impact(api: tuple[ServedIngest, str]) -> None:
    response = hook(api, "metric_alert", metric_alert("critical", count=1000))
    assert response.status_code == 200 and response.json()["received"] == "alert"
    [alert] = [a for a in alerts_of(api, response) if a.state == "firing"]
    assert (alert.state, alert.severity, alert.rule) == ("firing", "critical", "sentry")
    assert alert.labels == {
        "alertname": "Too many errors",
        "severity": "critical",
        "project": PROJECT,
        "source": "sentry",
        "sentry_alert_rule_id": "7",
        "sentry_incident": "1",
        "channels": "slack-critical,email-oncall,phone-oncall",
    }
    assert alert.fingerprint == alert_fingerprint(alert.labels)
    assert alert.annotations["summary"] == "Critical: Too many errors"
    assert alert.annotations["description"].startswith("1000 events in the last 10 minutes")
    assert alert.annotations["sentry_url"] == "https://sentry.io/organizations/baz/alerts/1/"
    # No query service beside this ingest: the impact says why it is unknown.
    assert alert.annotations["impact"].startswith("revenue at stake unknown")
    assert alert.ends_at is None


def test_a_graded_alert_fires_at_one_severity_resolving_the_others_and_resolved_resolves_all(
    api: tuple[ServedIngest, str],
) -> None:
    critical = alerts_of(api, hook(api, "metric_alert", metric_alert("critical", count=60)))
    assert [(a.severity, a.state) for a in critical] == [
        ("critical", "firing"), ("high", "resolved"), ("medium", "resolved"), ("low", "resolved")
    ]  # fmt: skip
    # Sentry's warning with 25 errors: high by the count; the incident's critical alert resolves.
    warning = alerts_of(api, hook(api, "metric_alert", metric_alert("warning", count=25)))
    assert [(a.severity, a.state) for a in warning] == [
        ("critical", "resolved"), ("high", "firing"), ("medium", "resolved"), ("low", "resolved")
    ]  # fmt: skip
    assert warning[0].fingerprint == critical[0].fingerprint
    assert warning[1].labels["channels"] == "slack-high"
    resolved = alerts_of(api, hook(api, "metric_alert", metric_alert("resolved", count=2)))
    assert [(a.severity, a.state) for a in resolved] == [
        (s, "resolved") for s in ("critical", "high", "medium", "low")
    ]
    assert resolved[1].fingerprint == warning[1].fingerprint
    assert all(a.ends_at is not None and "impact" not in a.annotations for a in resolved)


@pytest.mark.parametrize(
    ("action", "count", "query", "severity"),
    [
        # The guide's order: the category tag, then the count, then Sentry's own severity.
        ("warning", 1, "category:payment level:error", "critical"),
        ("warning", None, "category:security", "critical"),
        ("critical", 100, "category:external", "high"),
        ("critical", None, "category:database", "high"),
        ("warning", 51, "level:error", "critical"),
        ("warning", 50, "level:error", "high"),
        ("critical", 21, "level:error", "high"),
        ("critical", 20, "level:error", "medium"),
        ("critical", 6, "level:error", "medium"),
        ("critical", 5, "level:error", "low"),
        ("critical", None, "level:error", "critical"),
        ("warning", None, "level:error", "high"),
    ],
)
def test_a_metric_alerts_severity_follows_its_category_tag_then_its_count_then_sentry(
    api: tuple[ServedIngest, str], action: str, count: int | None, query: str, severity: str
) -> None:
    [firing] = [
        a
        for a in alerts_of(api, hook(api, "metric_alert", metric_alert(action, count, query)))
        if a.state == "firing"
    ]
    assert (firing.severity, firing.labels["severity"]) == (severity, severity)


def test_a_metric_alert_tagged_payment_is_critical_and_resolves_at_that_severity_alone(
    api: tuple[ServedIngest, str],
) -> None:
    body = metric_alert("warning", count=3)
    body["data"]["metric_alert"]["tags"] = {"category": "payment"}  # tags given as an object
    [firing] = alerts_of(api, hook(api, "metric_alert", body))
    assert (firing.state, firing.severity) == ("firing", "critical")
    assert firing.labels["channels"] == "slack-critical,email-oncall,phone-oncall"
    assert "page" not in firing.labels  # no revenue known beside this ingest: nothing at stake pages
    body = metric_alert("resolved")
    body["data"]["metric_alert"]["tags"] = {"category": "payment"}
    [resolved] = alerts_of(api, hook(api, "metric_alert", body))
    assert (resolved.state, resolved.fingerprint) == ("resolved", firing.fingerprint)


def test_sentrys_documented_metric_alert_example_as_it_is(api: tuple[ServedIngest, str]) -> None:
    response = hook(api, "metric_alert", payload("metric_alert"))
    assert response.status_code == 200
    assert {a.state for a in alerts_of(api, response)} == {"resolved"}


def test_an_unknown_metric_alert_action_is_a_400(api: tuple[ServedIngest, str]) -> None:
    assert hook(api, "metric_alert", metric_alert("critical") | {"action": "exploded"}).status_code == 400


# -- issue alerts, issues, errors --------------------------------------------------------------------


def test_an_issue_alert_fires_until_sentry_resolves_the_issue(api: tuple[ServedIngest, str]) -> None:
    body = payload("event_alert")
    body["data"]["event"]["datetime"] = recent(1)
    [fired] = alerts_of(api, hook(api, "event_alert", body))
    assert (fired.state, fired.severity) == ("firing", "high")  # an error, no category tag
    assert fired.labels["sentry_issue_id"] == "1117540176"
    assert fired.annotations["sentry_rule"] == "Very Important Alert Rule!"
    assert fired.annotations["summary"] == "Very Important Alert Rule!: ReferenceError: heck is not defined"
    assert fired.annotations["sentry_url"].endswith(
        "/issues/1117540176/events/e4874d664c3540c1a32eab185f12c5ab/"
    )
    issue = payload("issue")
    issue["action"] = "resolved"
    issue["data"]["issue"]["id"] = "1117540176"
    resolved = alerts_of(api, hook(api, "issue", issue))
    assert [(a.severity, a.state) for a in resolved] == [("critical", "resolved"), ("high", "resolved")]
    assert resolved[1].fingerprint == fired.fingerprint

    body["data"]["event"]["tags"] = [["category", "security"], ["level", "error"]]  # an event's pairs
    [security] = alerts_of(api, hook(api, "event_alert", body))
    assert (security.state, security.severity) == ("firing", "critical")


def test_errors_and_new_issues_are_counted_as_events(api: tuple[ServedIngest, str]) -> None:
    error = payload("error")
    error["data"]["error"]["datetime"] = recent(2)
    response = hook(api, "error", error)
    assert response.json() == {"received": "event", "accepted": 1, "rejected": 0}
    [event] = events_of(api, response)
    assert (event["type"], event["metric"], event["value"], event["unit"]) == (
        "performance",
        "sentry.errors",
        1.0,
        "count",
    )
    assert event["event_id"] == "sentry-bb78c1407cea4519aa397afc059c793d"
    assert event["tags"] == {"level": "error", "platform": "javascript", "sentry_issue_id": "1170820242"}
    assert event["source"] == "sentry"
    again = hook(api, "error", error)  # Sentry delivering the same error again: the same event id
    assert events_of(api, again)[0]["event_id"] == event["event_id"]
    issue = payload("issue")
    issue["data"]["issue"]["lastSeen"] = recent(1)
    [created] = events_of(api, hook(api, "issue", issue))
    assert (created["metric"], created["tags"]["sentry_issue_id"]) == ("sentry.issues", "1170820242")


def test_an_old_error_is_dead_lettered_and_other_resources_are_acknowledged(
    api: tuple[ServedIngest, str],
) -> None:
    old = hook(api, "error", payload("error"))  # Sentry's example dates from 2019
    assert old.json() == {"received": "event", "accepted": 0, "rejected": 1}
    assigned = payload("issue") | {"action": "assigned"}
    assert hook(api, "issue", assigned).json()["received"] == "ignored"
    assert hook(api, "installation", {"action": "created", "data": {}}).json()["received"] == "ignored"


def test_cli_sentry_add_issues_a_secret_the_ingest_takes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ingest = ServedIngest(tmp_path / "data")
    monkeypatch.setenv("COSNAP_DATA_DIR", str(ingest.data_dir))
    assert main(["sentry", "add", "--project", PROJECT]) == 0
    secret = capsys.readouterr().out.strip()
    assert len(secret) == 64
    assert main(["sentry", "add", "--project", PROJECT, "--secret", "as-sentry-shows-it"]) == 0
    ingest.start()
    try:
        for key in (secret, "as-sentry-shows-it"):
            assert hook((ingest, key), "metric_alert", metric_alert("critical")).status_code == 200
    finally:
        ingest.stop()
