"""What `cosnap-metrics validate` sends never shows on a dashboard: every panel's rows on chDB are
the same before and after synthetic events of every type (tag `synthetic: "true"`), a synthetic
alert episode (label `synthetic="true"`) and the deliveries and acknowledgement of its rule."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from clickhouse_connect.driver.client import Client

from schemas.settings import VALIDATE_RULE
from sinks.query.panels import PANELS, expand_macros
from tests.sinks.query.test_alerting import NOW, ack, delivery, episode, insert, known_rows, store

__all__ = ["store"]  # the chDB fixture of test_alerting


def event(event_id: str, kind: str, tags: dict[str, str]) -> dict[str, Any]:
    at = NOW - timedelta(minutes=5)
    fields: dict[str, dict[str, Any]] = {
        "revenue": {"name": "subscription", "amount": "9.99", "currency": "USD"},
        "conversion": {"funnel": "checkout", "step": "paid", "step_index": 3},
        "feature": {"feature": "ai_effect", "action": "apply"},
        "performance": {"metric": "cosnap.validate", "value": 1.0, "unit": "ms"},
    }
    return {
        "event_id": event_id, "project": "app", "type": kind, "timestamp": at, "received_at": at,
        "user_id": f"user-{event_id}", "tags": tags, **fields[kind],
    }  # fmt: skip


def every_panel(client: Client) -> dict[str, list[tuple[Any, ...]]]:
    return {
        panel.key: [
            tuple(row)
            for row in client.query(expand_macros(panel.sql, NOW - timedelta(days=1), NOW)).result_rows
        ]
        for panel in PANELS
    }


def test_synthetic_rows_change_no_panel(store: Client) -> None:
    kinds = ("revenue", "conversion", "feature", "performance")
    insert(store, "events", [event(f"real-{kind}", kind, {"plan": "pro"}) for kind in kinds])
    known_rows(store)
    before = every_panel(store)
    assert all(
        before[key] for key in ("revenue_by_currency", "funnels", "top_features", "latency_p95", "alerting")
    )

    synthetic = {"synthetic": "true", "validate_run": "r1"}
    insert(store, "events", [event(f"validate-{kind}", kind, synthetic) for kind in kinds])
    firing = episode("v", VALIDATE_RULE, 30, 0.5, None)
    resolved = episode("w", VALIDATE_RULE, 60, 0.5, 90)
    for record in (*firing, *resolved):
        record["labels"] = {"synthetic": "true"}
    insert(store, "alerts", [*firing, *resolved])
    insert(store, "alert_deliveries", [delivery("v", VALIDATE_RULE, 30, "firing", "validate", "delivered")])
    insert(store, "alert_acks", [ack("w", VALIDATE_RULE, 60, True, 10)])

    assert every_panel(store) == before
