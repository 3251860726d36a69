"""The monitoring guide's high error rate in the default rules (`high_error_rate`): more than 10
errors in 5 minutes, counted on the error events of Sentry's webhooks (performance events of the
metric `sentry.errors`), evaluated by the worker's engine without Kafka."""

from __future__ import annotations

from typing import Any

from schemas.rules import load_rules
from streams.alerts import AlertEngine
from tests.streams.test_alerts import NOW, envelope, fold, perf


def error(seconds: float) -> dict[str, Any]:
    """An error as the ingest counts a Sentry `error` webhook."""
    return perf(seconds, "sentry.errors", 1.0, level="error", platform="javascript") | {"unit": "count"}


def changes(engine: AlertEngine, *events: dict[str, Any]) -> list[dict[str, Any]]:
    return [change for change in fold(engine, envelope(*events), NOW) if change["rule"] == "high_error_rate"]


def test_the_eleventh_error_in_five_minutes_fires() -> None:
    engine = AlertEngine(load_rules(), idle_s=5)
    assert changes(engine, *(error(25 * i) for i in range(10))) == []  # 10 errors: not more than 10
    [firing] = changes(engine, error(260))
    assert (firing["state"], firing["value"], firing["threshold"], firing["severity"]) == (
        "firing", 11.0, 10.0, "high"
    )  # fmt: skip
    assert firing["labels"] == {
        "alertname": "high_error_rate",
        "severity": "high",
        "project": "cosnap",
        "channels": "slack-high,email-team",
    }
    assert firing["annotations"]["summary"] == "11 errors in 5m (threshold 10)"
    assert firing["annotations"]["impact"] == "no revenue in the last 1h"


def test_errors_further_apart_than_five_minutes_do_not_add_up() -> None:
    engine = AlertEngine(load_rules(), idle_s=5)
    assert changes(engine, *(error(s) for s in range(6))) == []
    assert changes(engine, *(error(320 + s) for s in range(6))) == []  # the first six left the window


def test_other_events_are_not_errors() -> None:
    engine = AlertEngine(load_rules(), idle_s=5)
    others = [perf(s, "sentry.issues", 1.0) for s in range(20)] + [perf(s, "api.latency") for s in range(20)]
    assert changes(engine, *others) == []


def test_the_alert_resolves_when_the_errors_leave_the_window() -> None:
    engine = AlertEngine(load_rules(), idle_s=5)
    [firing] = changes(engine, *(error(s) for s in range(11)))
    assert changes(engine, perf(309, "api.latency")) == []
    assert changes(engine, perf(310, "api.latency")) == []
    [resolved] = [c for c in engine.tick(NOW + 1) if c["rule"] == "high_error_rate"]
    assert (resolved["state"], resolved["fingerprint"]) == ("resolved", firing["fingerprint"])
