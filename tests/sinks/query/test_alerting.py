"""Alerting measured, the query and the gauges: the alerting panel's SQL on chDB rows of known
episodes, deliveries and acknowledgements (a replayed delivery and a changed acknowledgement
count once), its `/metrics` gauges from the same rows, linted by `promtool check metrics`; alert
ids round-trip for any fingerprint and time."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from plumbing.clickhouse import connect
from plumbing.status import exposition
from schemas.records import alert_id, parse_alert_id
from sinks.clickhouse.ddl import apply_migrations
from sinks.query.alerting import alerting_sql, publish
from sinks.query.panels import PANELS, expand_macros
from sinks.query.reader import QueryResult

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Client]:
    client = connect(f"chdb://{tmp_path / 'clickhouse'}")
    apply_migrations(client, "metrics")
    yield client
    client.close()


def insert(client: Client, table: str, rows: list[dict[str, Any]]) -> None:
    lines = "\n".join(json.dumps(row, default=str) for row in rows)
    client.command(f"INSERT INTO metrics.{table} FORMAT JSONEachRow {lines}")


def episode(
    fingerprint: str, rule: str, started_ago_min: float, detect_s: float, resolve_s: float | None
) -> list[dict[str, Any]]:
    """The firing record of an episode, and its resolved record when `resolve_s` is given."""
    starts_at = NOW - timedelta(minutes=started_ago_min)
    common: dict[str, Any] = {
        "fingerprint": fingerprint,
        "rule": rule,
        "severity": "warning",
        "project": "app",
    }
    common |= {"labels": {}, "annotations": {}, "value": 1.0, "threshold": 1.0, "starts_at": starts_at}
    records = [
        common
        | {
            "state": "firing",
            "ends_at": None,
            "evaluated_at": starts_at,
            "emitted_at": starts_at + timedelta(seconds=detect_s),
        }
    ]
    if resolve_s is not None:
        ends_at = starts_at + timedelta(seconds=resolve_s)
        records.append(
            common | {"state": "resolved", "ends_at": ends_at, "evaluated_at": ends_at, "emitted_at": ends_at}
        )
    return records


def delivery(
    fingerprint: str, rule: str, started_ago_min: float, state: str, target: str, outcome: str
) -> dict[str, Any]:
    return {
        "fingerprint": fingerprint, "rule": rule, "project": "app", "state": state,
        "starts_at": NOW - timedelta(minutes=started_ago_min), "target": target, "outcome": outcome,
        "tries": 1, "seconds": 0.1, "error": "", "finished_at": NOW - timedelta(minutes=1),
    }  # fmt: skip


def ack(
    fingerprint: str, rule: str, started_ago_min: float, noise: bool, acked_ago_min: float
) -> dict[str, Any]:
    return {
        "fingerprint": fingerprint, "starts_at": NOW - timedelta(minutes=started_ago_min), "rule": rule,
        "project": "app", "noise": noise, "note": "", "acked_at": NOW - timedelta(minutes=acked_ago_min),
    }  # fmt: skip


def known_rows(client: Client) -> None:
    """payment_failures: three episodes of one alert in the last day, the second 8 minutes after
    the first resolved (flapping), the third 87 minutes after the second (not), still firing; one
    episode two days ago (outside a one-day range, but the one before the range's first).
    api_error_rate: one episode, resolved after 12 minutes. Deliveries at two targets, one
    replayed (one row), one failed; one acknowledgement turned into noise, one acknowledged as
    not noise."""
    insert(
        client,
        "alerts",
        [
            *episode("a", "payment_failures", 2 * 24 * 60, 1.0, 60),
            *episode("a", "payment_failures", 300, 2.0, 120),
            *episode("a", "payment_failures", 290, 4.0, 180),  # 10 min after 300 + 2 min: 8 min
            *episode("a", "payment_failures", 200, 0.5, None),
            *episode("b", "api_error_rate", 100, 1.5, 720),
        ],
    )
    hook, manager = "webhook http://127.0.0.1/hook", "alertmanager http://127.0.0.1:9093"
    deliveries = [
        delivery("a", "payment_failures", started, state, target, "delivered")
        for started, states in (
            (300, ("firing", "resolved")),
            (290, ("firing", "resolved")),
            (200, ("firing",)),
        )
        for state in states
        for target in (hook, manager)
    ]
    deliveries[0] = deliveries[0] | {"outcome": "failed", "error": "HTTP 500"}
    deliveries += [
        delivery("b", "api_error_rate", 100, "firing", hook, "delivered"),
        delivery("b", "api_error_rate", 100, "resolved", hook, "delivered"),
    ]
    insert(client, "alert_deliveries", deliveries)
    insert(client, "alert_deliveries", deliveries[-1:])  # a notifier restart delivered it again
    insert(client, "alert_acks", [ack("a", "payment_failures", 290, False, 50)])
    insert(client, "alert_acks", [ack("a", "payment_failures", 290, True, 40)])  # changed: noise after all
    insert(client, "alert_acks", [ack("b", "api_error_rate", 100, False, 30)])


def test_the_alerting_query_counts_episodes_deliveries_flapping_and_noise_per_rule(store: Client) -> None:
    known_rows(store)
    (panel,) = [p for p in PANELS if p.key == "alerting"]
    result = store.query(expand_macros(panel.sql, NOW - timedelta(days=1), NOW))
    rows = [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]
    assert [row["rule"] for row in rows] == ["api_error_rate", "payment_failures", "(all)"]
    api, payments, every = rows
    # payment_failures: 3 episodes in the day, 9 of its 10 deliveries taken.
    assert (payments["fired"], payments["alerts_per_day"]) == (3, 3.0)
    assert (payments["delivered"], payments["failed"], payments["delivery_pct"]) == (9, 1, 90.0)
    assert payments["detect_s"] == pytest.approx((2.0 + 4.0 + 0.5) / 3, abs=1e-3)
    assert (payments["resolved"], payments["mttr_s"]) == (2, 150.0)
    assert payments["flapping"] == 1
    assert (payments["noise"], payments["noise_pct"]) == (1, 33.33)
    assert (api["fired"], api["delivered"], api["delivery_pct"], api["mttr_s"]) == (1, 2, 100.0, 720.0)
    assert (api["flapping"], api["noise"], api["noise_pct"]) == (0, 0, 0.0)
    assert (every["fired"], every["delivered"], every["failed"], every["delivery_pct"]) == (4, 11, 1, 91.67)
    assert (every["resolved"], every["mttr_s"], every["noise_pct"]) == (3, 340.0, 25.0)
    assert (every["alerts_per_day_target"], every["delivery_pct_target"]) == (10, 99.9)
    assert (every["mttr_s_target"], every["noise_pct_target"]) == (300, 2)

    # Over three days the episode of two days ago counts, and so does its resolve.
    result = store.query(expand_macros(panel.sql, NOW - timedelta(days=3), NOW))
    every = dict(zip(result.column_names, result.result_rows[-1], strict=True))
    assert (every["fired"], every["alerts_per_day"], every["resolved"]) == (5, round(5 / 3, 2), 4)


def test_the_gauges_carry_the_query_rows_and_pass_promtool(store: Client) -> None:
    known_rows(store)
    result = store.query(alerting_sql(1, NOW))
    publish(
        QueryResult(columns=list(result.column_names), types=[], rows=[list(r) for r in result.result_rows]),
        1,
    )

    def sample(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, labels)

    assert sample("cosnap_alerting_alerts_fired", rule="payment_failures") == 3
    assert sample("cosnap_alerting_alerts_per_day", rule="(all)") == 4
    assert sample("cosnap_alerting_delivery_ratio", rule="payment_failures") == pytest.approx(0.9)
    assert sample("cosnap_alerting_deliveries", rule="(all)", outcome="failed") == 1
    assert sample("cosnap_alerting_resolve_seconds", rule="api_error_rate") == 720
    assert sample("cosnap_alerting_flapping_alerts", rule="payment_failures") == 1
    assert sample("cosnap_alerting_noise_ratio", rule="(all)") == pytest.approx(0.25)
    assert sample("cosnap_alerting_target", measure="delivery_ratio") == pytest.approx(0.999)
    assert sample("cosnap_alerting_target", measure="resolve_seconds") == 300
    assert sample("cosnap_alerting_period_seconds") == 86400
    lint = subprocess.run(
        ["promtool", "check", "metrics"], input=exposition(), capture_output=True, timeout=30
    )
    assert lint.returncode == 0, lint.stdout.decode() + lint.stderr.decode()

    # A rule without an episode in the period still shows its deliveries; a measure without a
    # value (no resolved episode, nothing fired) has no sample.
    result = store.query(alerting_sql(1, NOW + timedelta(hours=21, minutes=40)))  # from 140 min ago
    rows = [list(r) for r in result.result_rows]
    publish(QueryResult(columns=list(result.column_names), types=[], rows=rows), 1)
    assert [row[0] for row in rows] == ["api_error_rate", "payment_failures", "(all)"]
    assert sample("cosnap_alerting_alerts_fired", rule="payment_failures") == 0
    assert sample("cosnap_alerting_delivery_ratio", rule="payment_failures") == pytest.approx(0.9)
    assert sample("cosnap_alerting_resolve_seconds", rule="payment_failures") is None
    assert sample("cosnap_alerting_noise_ratio", rule="payment_failures") is None
    assert sample("cosnap_alerting_alerts_fired", rule="api_error_rate") == 1

    # Nothing in the period: no rule has a sample left.
    result = store.query(alerting_sql(1, NOW + timedelta(days=10)))
    publish(QueryResult(columns=list(result.column_names), types=[], rows=[]), 1)
    assert result.result_rows == []
    assert sample("cosnap_alerting_alerts_fired", rule="api_error_rate") is None
    assert sample("cosnap_alerting_deliveries", rule="(all)", outcome="delivered") is None


@given(
    fingerprint=st.text(alphabet="0123456789abcdef", min_size=16, max_size=16),
    starts_at=st.datetimes(
        min_value=datetime(1971, 1, 1), max_value=datetime(2999, 12, 31), timezones=st.just(UTC)
    ),
)
def test_any_alert_id_names_its_fingerprint_and_start_to_the_millisecond(
    fingerprint: str, starts_at: datetime
) -> None:
    starts_at = starts_at.replace(microsecond=starts_at.microsecond // 1000 * 1000)
    assert parse_alert_id(alert_id(fingerprint, starts_at)) == (fingerprint, starts_at)


@pytest.mark.parametrize(
    "text", ["", "abc-1", "0123456789abcdeg-1", "0123456789abcdef", "0123456789abcdef-x"]
)
def test_a_malformed_alert_id_is_refused_with_the_form_expected(text: str) -> None:
    with pytest.raises(ValueError, match="is not an alert id"):
        parse_alert_id(text)
