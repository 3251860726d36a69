"""Alert rules and their evaluation on panes, without Kafka: the rules file and its checks, the
state machine (through the shipped rule tests), early firing, sliding windows, ratios, value
filters, percentiles, baselines, group caps, impact (revenue, users, conversion) and paging, and
restart without a repeat."""

from __future__ import annotations

import math
import random
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, get_args

import orjson
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from cosnap_metrics.cli import main
from schemas.rules import (
    DEFAULT_RULES,
    PAGING_CHANNEL,
    SEVERITIES,
    BusinessImpact,
    Channel,
    Impact,
    RuleFile,
    RulesError,
    Severity,
    load_rules,
    routing_labels,
)
from schemas.series import DEFAULT_SERIES
from streams.alerts import MAX_GROUPS, AlertEngine, fingerprint
from streams.envelope import EnvelopeView, decode
from streams.series import SeriesResolver
from streams.watermark import Watermark
from streams.windows import EventTimeWindows

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
NOW = 2_000_000_000.0  # wall clock of the tests: only idleness depends on it


def at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def perf(seconds: float, metric: str, value: float = 100.0, **tags: str) -> dict[str, Any]:
    return {
        "type": "performance",
        "timestamp": at(seconds),
        "metric": metric,
        "value": value,
        "unit": "ms",
        "tags": tags,
    }


def payment_failure(seconds: float) -> dict[str, Any]:
    return perf(seconds, "payment.latency", category="payment", status="failed")


def envelope(*events: dict[str, Any], project: str = "cosnap") -> EnvelopeView:
    """An envelope of `events`, each with an event_id of its own unless it names one."""
    events = tuple({"event_id": uuid.uuid4().hex} | event for event in events)
    return decode(orjson.dumps({"project": project, "events": list(events)}))


def fold(engine: AlertEngine, record: EnvelopeView, now: float) -> list[dict[str, Any]]:
    """The engine's changes for a record, its events batched by windows as the worker batches
    them (with no grace limit: no event is late here)."""
    windows = EventTimeWindows(
        Watermark(lateness_s=0, idle_s=5), grace_s=math.inf, series=SeriesResolver(DEFAULT_SERIES)
    )
    return engine.add(record.project, windows.add_envelope(0, record, now), now)


def rules(*rules: dict[str, Any]) -> RuleFile:
    return RuleFile.model_validate({"rules": list(rules)})


def rule(**fields: Any) -> dict[str, Any]:
    return {
        "name": "r",
        "window": "1m",
        "op": ">=",
        "threshold": 3,
        "annotations": {"summary": "{value}"},
    } | fields


# -- the rules file ----------------------------------------------------------------------------


def test_the_default_rules_hold_the_apps_five_rules_and_the_business_rules() -> None:
    names = {rule.name for rule in load_rules().rules}
    assert {
        "api_error_rate",
        "payment_failures",
        "ai_provider_failures",
        "slow_transactions",
        "auth_errors",
    } <= names
    assert {"revenue_drop", "checkout_conversion_drop"} <= names
    assert main(["rules", "check", str(DEFAULT_RULES)]) == 0


def test_the_shipped_rule_tests_pass_and_a_wrong_expectation_fails(tmp_path: Path) -> None:
    assert main(["rules", "test", str(DEFAULT_RULES.with_name("default-rules.test.yaml"))]) == 0
    (tmp_path / "rules.yaml").write_text(DEFAULT_RULES.read_text())
    wrong = {
        "rule_file": "rules.yaml",
        "tests": [{"rule": "payment_failures", "values": "0 3", "expect": [{"at": "0s", "state": "firing"}]}],
    }
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(wrong))
    assert main(["rules", "test", str(tmp_path / "t.yaml")]) == 1


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"window": "15s"}, "multiple of 10s"),
        ({"aggregate": "ratio"}, "denominator"),
        ({"resolve_threshold": 5}, "safe side"),
        ({"window": "5 minutes"}, "duration"),
        ({"labels": {"project": "x"}}, "redefine"),
        ({"match": {"type": "performance", "colour": "red"}}, "colour"),
        ({"aggregate": "p95", "baseline": {"days": 7}}, "baseline"),
        ({"channels": ["slack-everyone"]}, "slack-critical"),
        ({"severity": "urgent"}, "critical"),
        ({"labels": {"page": "true"}}, "redefine"),
        ({"impact": {"page_above": -1}}, "page_above"),
    ],
)
def test_a_bad_rule_is_refused_with_the_reason(tmp_path: Path, fields: dict[str, Any], reason: str) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"rules": [rule(match={"type": "performance"}) | fields]}))
    with pytest.raises(RulesError, match=reason):
        load_rules(path)
    assert main(["rules", "check", str(path)]) == 1


def test_rules_check_reports_a_template_naming_a_field_the_alert_lacks(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        yaml.safe_dump({"rules": [rule(match={"type": "performance"}, annotations={"summary": "{route}"})]})
    )
    assert main(["rules", "check", str(path)]) == 1


# -- evaluation --------------------------------------------------------------------------------


def test_a_burst_fires_on_the_record_that_crosses_the_threshold_once_and_resolves_once() -> None:
    engine = AlertEngine(load_rules(), idle_s=5)
    assert fold(engine, envelope(payment_failure(1), payment_failure(2)), NOW) == []
    [firing] = fold(engine, envelope(payment_failure(3)), NOW)
    assert (firing["rule"], firing["state"], firing["value"], firing["severity"]) == (
        "payment_failures", "firing", 3.0, "critical"
    )  # fmt: skip
    assert firing["labels"] == {
        "alertname": "payment_failures",
        "severity": "critical",
        "project": "cosnap",
        "channels": "slack-critical,email-oncall,phone-oncall",  # no page: no revenue at stake
    }
    # The routing labels are left out of the fingerprint: it is the same as before they existed.
    assert (
        firing["fingerprint"]
        == fingerprint(firing["labels"])
        == fingerprint({"alertname": "payment_failures", "severity": "critical", "project": "cosnap"})
    )
    assert firing["starts_at"] == firing["evaluated_at"] == "2026-11-26T12:00:03Z"
    assert firing["annotations"]["summary"] == "3 payment failures in 5m (threshold 3)"
    assert firing["annotations"]["runbook_url"].startswith("https://")
    assert fold(engine, envelope(payment_failure(4)), NOW) == []  # still the same episode
    assert engine.tick(NOW + 1) == []
    # Other traffic moves the clock on; once the failures have left the 5-minute window (whole
    # panes: the current one and the 30 before it), the next evaluation resolves the alert.
    assert fold(engine, envelope(perf(309, "api.latency")), NOW + 2) == []
    assert engine.tick(NOW + 2) == []
    assert fold(engine, envelope(perf(310, "api.latency")), NOW + 3) == []
    [resolved] = engine.tick(NOW + 3)
    assert (resolved["state"], resolved["fingerprint"], resolved["starts_at"]) == (
        "resolved", firing["fingerprint"], firing["starts_at"]
    )  # fmt: skip
    assert resolved["ends_at"] == "2026-11-26T12:05:10Z"
    assert engine.tick(NOW + 4) == []


def test_a_quiet_partition_resolves_on_wall_clock_ticks_once_idle() -> None:
    engine = AlertEngine(rules(rule(match={"type": "performance", "metric": "m"})), idle_s=5)
    [_firing] = fold(engine, envelope(*(perf(s, "m") for s in (1, 2, 3))), NOW)
    assert engine.tick(NOW + 4) == []  # not idle yet: the clock stays at the newest event
    assert engine.tick(NOW + 60) == []  # idle: the clock is at 3 + 60 s, the pane of 0-10 s still counts
    [resolved] = engine.tick(NOW + 70)  # at 73 s the 1-minute window holds the panes from 10 s on
    assert resolved["state"] == "resolved"


def test_groups_fire_separately_with_their_labels() -> None:
    engine = AlertEngine(load_rules(), idle_s=5)
    failures = [perf(s, "ai.provider.latency", provider="replicate", status="error") for s in range(21)]
    [firing] = fold(
        engine,
        envelope(*failures, perf(21, "ai.provider.latency", provider="stability", status="error")),
        NOW,
    )
    assert firing["labels"]["provider"] == "replicate"
    assert "replicate" in firing["annotations"]["summary"]


def test_a_ratio_needs_its_minimum_sample_and_counts_both_sides() -> None:
    error_rate = rule(
        match={"type": "performance", "metric": "api", "tags": {"status": "500"}},
        aggregate="ratio",
        of={"type": "performance", "metric": "api"},
        op=">",
        threshold=0.1,
        min_samples=20,
    )
    engine = AlertEngine(rules(error_rate), idle_s=5)
    key = ("r", "cosnap", ())
    assert fold(engine, envelope(*(perf(1, "api", status="500") for _ in range(5))), NOW) == []
    assert engine.value(key, engine.clock(NOW)) == (None, 5)  # 100 % errors, but 5 requests is no data
    [firing] = fold(engine, envelope(*(perf(2, "api", status="200") for _ in range(15))), NOW)
    assert firing["value"] == pytest.approx(0.25)


@pytest.mark.parametrize("aggregate", ["count", "sum", "avg", "min", "max", "ratio"])
def test_window_values_slide_with_the_clock_and_equal_a_recount(aggregate: str) -> None:
    """A group keeps the totals of its window's older panes and slides them along as the clock
    moves: at every record they equal a recount of the window's events, also when events land
    in older panes and when old panes are forgotten."""
    errors = {"type": "performance", "metric": "api", "tags": {"status": "500"}}
    everything = {"type": "performance", "metric": "api"}
    ratio = aggregate == "ratio"
    engine = AlertEngine(
        rules(rule(match=errors if ratio else everything, of=everything if ratio else None,
                   aggregate=aggregate, window="1m", threshold=1e12)),
        idle_s=5,
    )  # fmt: skip
    rng = random.Random(aggregate)
    seen: list[tuple[float, float, str]] = []  # (pane start, value, status)
    for n in range(400):
        seconds = n * 1.3 - rng.choice([0, 0, 0, 4, 12, 35])  # some land in older panes
        value, status = float(rng.randint(1, 9000)) / 10, rng.choice(["200", "500"])
        fold(engine, envelope(perf(seconds, "api", value, status=status)), NOW)
        seen.append((T0.timestamp() + seconds // 10 * 10, value, status))
        if n % 25 == 0:
            engine.tick(NOW)  # forgets panes no window reaches any more
        end = engine.clock(NOW) // 10 * 10
        window = [(value, status) for start, value, status in seen if end - 60 <= start <= end]
        values = [value for value, status in window if status == "500" or not ratio]
        expected = {
            "count": float(len(values)),
            "sum": sum(values),
            "avg": sum(values) / len(values) if values else None,
            "min": min(values, default=None),
            "max": max(values, default=None),
            "ratio": len(values) / len(window) if window else None,
        }[aggregate]
        value_now, _ = engine.value(("r", "cosnap", ()), engine.clock(NOW))
        assert value_now == pytest.approx(expected), (n, aggregate)


@pytest.mark.parametrize(
    ("values", "inside"),
    [
        ([150.0, 199.9], 2),
        ([10.0, 99.9], 0),
        ([200.0, 900.0], 0),
        ([150.0, 250.0], 1),
        ([50.0, 150.0], 1),
        ([99.9, 100.0, 150.0, 200.0], 2),
    ],
)
def test_value_bounds_take_exactly_the_events_inside_them(values: list[float], inside: int) -> None:
    """A batch wholly inside or outside a rule's value bounds is decided from its min and max;
    one across a bound is checked event by event: either way the same events count."""
    bounded = rule(match={"type": "performance", "metric": "api", "value": {"gte": 100, "lt": 200}})
    engine = AlertEngine(rules(bounded | {"threshold": 1e9}), idle_s=5)
    fold(engine, envelope(*(perf(1, "api", v) for v in values)), NOW)
    fold(engine, envelope(perf(2, "api", 120.0)), NOW)  # one more inside, so the group exists
    assert engine.value(("r", "cosnap", ()), engine.clock(NOW)) == (float(inside + 1), inside + 1)


def test_value_filters_and_percentiles() -> None:
    slow = rule(
        name="slow",
        match={"type": "performance", "metric": "api", "value": {"gt": 5000}},
        op=">",
        threshold=1,
    )
    p95 = rule(
        name="p95", match={"type": "performance", "metric": "api"}, aggregate="p95", op=">", threshold=900
    )
    engine = AlertEngine(rules(slow, p95), idle_s=5)
    values = [100.0] * 90 + [1000.0] * 9 + [6000.0]
    changes = fold(engine, envelope(*(perf(1, "api", v) for v in values)), NOW)
    assert changes == [next(c for c in changes if c["rule"] == "p95")]  # one slow request is not > 1
    assert changes[0]["value"] == pytest.approx(1000.0, rel=0.01)
    [slow_firing] = fold(engine, envelope(perf(2, "api", 7000.0)), NOW)
    assert (slow_firing["rule"], slow_firing["value"]) == ("slow", 2.0)


def test_revenue_below_half_of_the_same_hour_of_the_last_days_fires_only_with_that_history() -> None:
    drop = rule(
        match={"type": "revenue"}, aggregate="sum", window="1h", baseline={"days": 2}, op="<", threshold=0.5,
        group_by=["currency"], annotations={"summary": "{currency} at {value:.0%}"},
    )  # fmt: skip
    engine = AlertEngine(rules(drop), idle_s=5)

    def sale(seconds: float, amount: str) -> dict[str, Any]:
        return {"type": "revenue", "timestamp": at(seconds), "name": "s", "amount": amount, "currency": "USD"}

    day = 86400
    # 100 USD in every hour of the two previous days (and the hour before them).
    assert fold(engine, envelope(*(sale(h * 3600 + 60, "100") for h in range(-49, 0))), NOW) == []
    [firing] = fold(engine, envelope(sale(3000, "40")), NOW)  # 40 USD this hour: 40 %
    assert firing["value"] == pytest.approx(0.4, abs=0.01)
    assert firing["annotations"]["summary"] == "USD at 40%"
    young = AlertEngine(rules(drop), idle_s=5)  # one day of history is not enough for a 2-day baseline
    assert fold(young, envelope(sale(-day + 60, "100"), sale(3000, "1")), NOW) == []


def test_a_runaway_group_tag_shares_one_overflow_group() -> None:
    engine = AlertEngine(
        rules(rule(match={"type": "performance"}, group_by=["route"], threshold=10**6)), idle_s=5
    )
    fold(engine, envelope(*(perf(1, "m", route=f"/r/{n}") for n in range(MAX_GROUPS + 50))), NOW)
    assert len(engine.to_state()["groups"]) == MAX_GROUPS + 1


def test_the_impact_is_the_projects_revenue_per_minute_times_the_expected_duration() -> None:
    engine = AlertEngine(load_rules(), idle_s=5)
    sales = [
        {"type": "revenue", "timestamp": at(-1800), "name": "s", "amount": "600.00", "currency": "USD"},
        {"type": "revenue", "timestamp": at(-60), "name": "s", "amount": "60.00", "currency": "EUR"},
    ]
    [firing] = fold(engine, envelope(*sales, *(payment_failure(s) for s in (1, 2, 3))), NOW)
    assert firing["annotations"]["impact"] == (
        "revenue at stake (from the last 1h): 10.00 USD/min, 300.00 USD over 30m;"
        " 1.00 EUR/min, 30.00 EUR over 30m; conversion checkout checkout_started -> payment_succeeded:"
        " no checkout_started in the last 1h"
    )
    assert firing["annotations"]["revenue_at_stake"] == "30.00 EUR; 300.00 USD"
    assert "users_affected" not in firing["annotations"]  # the failures carried no user id


def test_severities_warning_reads_as_high_and_channels_default_to_the_severitys(tmp_path: Path) -> None:
    loaded = rules(
        rule(name="old", match={"type": "performance"}, severity="warning"),
        rule(name="low", match={"type": "performance"}, severity="low"),
        rule(name="quiet", match={"type": "performance"}, severity="info"),
        rule(name="own", match={"type": "performance"}, severity="critical", channels=["email-team"]),
    )
    assert [(r.severity, r.delivery_channels) for r in loaded.rules] == [
        ("high", ("slack-high",)),
        ("low", ("email-team",)),
        ("info", ()),
        ("critical", ("email-team",)),
    ]
    shipped = {r.name: (r.severity, r.delivery_channels) for r in load_rules().rules}
    assert shipped["payment_failures"] == ("critical", ("slack-critical", "email-oncall", "phone-oncall"))
    assert shipped["slow_transactions"] == ("medium", ("slack-monitoring",))
    assert shipped["ai_provider_failures"] == ("high", ("slack-high",))
    assert shipped["auth_errors"] == ("high", ("email-security", "slack-high"))
    assert shipped["high_error_rate"] == ("high", ("slack-high", "email-team"))
    engine = AlertEngine(loaded, idle_s=5)
    changes = fold(engine, envelope(*(perf(s, "m") for s in (1, 2, 3))), NOW)
    labels = {change["rule"]: change["labels"] for change in changes}
    assert labels["old"]["severity"] == "high" and labels["old"]["channels"] == "slack-high"
    assert "channels" not in labels["quiet"]  # info goes to the topic and the store only


def sale(seconds: float, amount: str, currency: str = "USD") -> dict[str, Any]:
    return {"type": "revenue", "timestamp": at(seconds), "name": "s", "amount": amount, "currency": currency}


def step(seconds: float, name: str, user: str) -> dict[str, Any]:
    return {
        "type": "conversion",
        "timestamp": at(seconds),
        "funnel": "checkout",
        "step": name,
        "user_id": user,
    }


def test_a_critical_alert_pages_only_above_the_revenue_at_stake_and_resolves_with_its_labels() -> None:
    engine = AlertEngine(load_rules(), idle_s=5)
    # 1,980 USD in the last hour: 33 USD/min, 990 at stake over the expected 30 minutes (no page);
    # 2,040: 1,020 at stake, above the 1,000 of payment_failures (page).
    [calm] = fold(engine, envelope(sale(-60, "1980.00"), *(payment_failure(s) for s in (1, 2, 3))), NOW)
    [paged] = fold(
        engine, envelope(sale(-60, "2040.00"), *(payment_failure(s) for s in (1, 2, 3)), project="shop"), NOW
    )
    assert calm["annotations"]["revenue_at_stake"] == "990.00 USD" and "page" not in calm["labels"]
    assert paged["annotations"]["revenue_at_stake"] == "1020.00 USD" and paged["labels"]["page"] == "true"
    assert paged["fingerprint"] == fingerprint(paged["labels"] | {"page": "false"})  # routing only

    # A restart keeps the decision: the checkpoint, or the firing record read back, holds it.
    restored = AlertEngine(load_rules(), idle_s=5)
    restored.restore(orjson.loads(orjson.dumps(engine.to_state())), NOW + 1)
    from_record = AlertEngine(load_rules(), idle_s=5)
    from_record.apply_published(orjson.loads(orjson.dumps(paged)))
    for successor in (engine, restored, from_record):
        # Revenue has gone by the time it resolves: the resolution still carries page="true",
        # so that Alertmanager ends the paged alert rather than another one.
        assert fold(successor, envelope(perf(4000, "api.latency"), project="shop"), NOW + 2) == []
        resolved = [change for change in successor.tick(NOW + 2) if change["labels"]["project"] == "shop"]
        assert [(r["state"], r["labels"]) for r in resolved] == [("resolved", paged["labels"])]


def test_the_impact_counts_distinct_users_and_the_funnel_steps_conversion_against_the_hour_before() -> None:
    engine = AlertEngine(load_rules(), idle_s=5)
    # The hour before: 10 checkouts started, 5 paid (50 %); this hour: 10 started, 2 paid (20 %).
    funnel = [step(-5400 + n, "checkout_started", f"u{n}") for n in range(10)]
    funnel += [step(-5000 + n, "payment_succeeded", f"u{n}") for n in range(5)]
    funnel += [step(-1200 + n, "checkout_started", f"v{n}") for n in range(10)]
    funnel += [step(-1000 + n, "payment_succeeded", f"v{n}") for n in range(2)]
    failures = [
        payment_failure(s) | {"user_id": user} for s, user in ((1, "a"), (2, "b"), (3, "a"), (4, "c"))
    ]
    fold(engine, envelope(*funnel), NOW)
    [firing] = fold(engine, envelope(*failures[:3], perf(3, "payment.latency", category="payment")), NOW)
    annotations = firing["annotations"]
    assert annotations["users_affected"] == "2"  # a and b: distinct users of the failures
    assert annotations["conversion_impact"] == (
        "checkout checkout_started -> payment_succeeded 20.0% against 50.0% the 1h before (-60%)"
    )
    assert "2 users affected" in annotations["impact"] and "conversion checkout" in annotations["impact"]


def test_a_restart_from_an_older_checkpoint_neither_repeats_nor_forgets_an_alert() -> None:
    first = AlertEngine(load_rules(), idle_s=5)
    early = envelope(payment_failure(1), payment_failure(2))
    crossing, later = envelope(payment_failure(3)), envelope(perf(400, "api.latency"))
    fold(first, early, NOW)
    checkpoint = orjson.loads(orjson.dumps(first.to_state()))  # taken before the crossing record
    [firing] = fold(first, crossing, NOW)

    # The worker dies; its successor restores the checkpoint, reads back what was published
    # since, and replays the records after the checkpoint.
    second = AlertEngine(load_rules(), idle_s=5)
    second.restore(checkpoint, NOW + 10)
    second.apply_published(orjson.loads(orjson.dumps(firing)))
    assert fold(second, crossing, NOW + 11) == []  # replayed: fired already
    assert second.tick(NOW + 12) == []
    assert fold(second, later, NOW + 13) == []  # touches no group of the rule: a tick resolves
    [resolved] = second.tick(NOW + 13)
    assert (resolved["state"], resolved["fingerprint"]) == ("resolved", firing["fingerprint"])

    # And a resolved episode read back is not fired again by the replay of its own records.
    third = AlertEngine(load_rules(), idle_s=5)
    third.restore(checkpoint, NOW + 20)
    for record in (firing, resolved):
        third.apply_published(orjson.loads(orjson.dumps(record)))
    assert fold(third, crossing, NOW + 21) == []
    assert fold(third, later, NOW + 22) == []
    assert third.tick(NOW + 23) == []


def test_an_event_just_older_than_the_newest_still_counts_in_a_one_pane_window() -> None:
    probe = rule(match={"type": "feature", "feature": "probe"}, window="10s", threshold=1)
    engine = AlertEngine(rules(probe), idle_s=5)
    feature = {"type": "feature", "feature": "probe", "action": "x", "timestamp": at(9.999)}
    [firing] = fold(engine, envelope(perf(10.001, "api.latency"), feature), NOW)
    assert firing["value"] == 1.0


CHANNELS: tuple[Channel, ...] = get_args(Channel)


@given(
    severity=st.sampled_from(SEVERITIES),
    channels=st.lists(st.sampled_from(CHANNELS), unique=True).map(tuple),
    revenue=st.dictionaries(
        st.sampled_from(["USD", "EUR", "JPY"]),
        st.decimals(min_value=0, max_value=10**7, places=2, allow_nan=False, allow_infinity=False),
    ),
    page_above=st.floats(min_value=0, max_value=10**6),
    expected_minutes=st.integers(min_value=1, max_value=240),
)
def test_an_alert_pages_exactly_when_critical_routed_to_the_phone_and_above_the_revenue_at_stake(
    severity: Severity,
    channels: tuple[Channel, ...],
    revenue: dict[str, Decimal],
    page_above: float,
    expected_minutes: int,
) -> None:
    impact = Impact(page_above=page_above, expected_duration=expected_minutes * 60)
    labels = routing_labels(severity, channels, BusinessImpact(revenue), impact)
    stakes = [float(total) / impact.revenue_window * impact.expected_duration for total in revenue.values()]
    pages = severity == "critical" and PAGING_CHANNEL in channels and any(s > page_above for s in stakes)
    assert ("page" in labels) == pages
    assert labels.get("channels", "") == ",".join(channels)
    assert routing_labels(severity, channels, None, None).get("page") is None  # no impact: no page
