"""The Python SDK's monitoring-guide calls (`client.business_metrics`) and Sentry breadcrumbs:
what each call sends, its defaults, metadata as tags within the API's limits, which calls are
sent at once (against a scripted API), then the guide's own scenario on the real pipeline."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
import sentry_sdk
from cosnap_metrics_sdk import MetricsClient

from tests.conftest import Pipeline, wait_for
from tests.sdk.conftest import ScriptedApi


class RecordingSentry:
    """A stand-in for `sentry_sdk` that keeps every breadcrumb."""

    def __init__(self) -> None:
        self.breadcrumbs: list[dict[str, Any]] = []

    def add_breadcrumb(self, crumb: dict[str, Any]) -> None:
        self.breadcrumbs.append(crumb)


def quiet_client(url: str, **options: Any) -> MetricsClient:
    """A client that sends only when told to, or for revenue and critical events."""
    return MetricsClient(url, "key", flush_interval=3600.0, flush_at=10_000, **options)


def test_the_guides_four_calls_send_the_four_events_with_the_guides_defaults(api: ScriptedApi) -> None:
    with quiet_client(api.url, sentry=False) as client:
        metrics = client.business_metrics
        metrics.track_conversion_step("photo_uploaded", "u1", {"source_page": "editor"})
        metrics.track_conversion_step("signed_up", "u1", {"funnel": "onboarding"})
        metrics.track_feature_usage("ai_effect.anime", "applied", "u1", {"plan": "pro"})
        metrics.track_performance_metric("api.latency", 123.4)
        metrics.track_performance_metric("render.rate", 58, "fps")
        metrics.track_revenue_event("subscription", "9.99")
    events = [event for request in api.received() for event in request.body["events"]]
    kept = ("type", "funnel", "step", "feature", "metric", "value", "unit", "name", "amount", "currency")
    assert [{k: e[k] for k in (*kept, "user_id", "tags") if k in e} for e in events] == [
        {
            "type": "conversion",
            "funnel": "default",
            "step": "photo_uploaded",
            "user_id": "u1",
            "tags": {"source_page": "editor"},
        },
        {"type": "conversion", "funnel": "onboarding", "step": "signed_up", "user_id": "u1"},
        {"type": "feature", "feature": "ai_effect.anime", "user_id": "u1", "tags": {"plan": "pro"}},
        {"type": "performance", "metric": "api.latency", "value": 123.4, "unit": "ms"},
        {"type": "performance", "metric": "render.rate", "value": 58.0, "unit": "fps"},
        {"type": "revenue", "name": "subscription", "amount": "9.99", "currency": "USD"},
    ]


def test_revenue_and_critical_events_are_sent_at_once(api: ScriptedApi) -> None:
    with quiet_client(api.url, sentry=False) as client:
        metrics = client.business_metrics
        step = metrics.track_conversion_step("signed_up", "u1")
        assert api.wait_requests(1, timeout=0.5) == []
        revenue = metrics.track_revenue_event("subscription", Decimal("4.99"), "EUR")
        assert [r.event_ids for r in api.wait_requests(1)] == [[step, revenue]]
        critical = metrics.track_feature_usage("payment", "failed", "u1", {"severity": "critical"})
        assert [r.event_ids for r in api.wait_requests(2)][1] == [critical]


def test_metadata_is_kept_as_tags_within_the_apis_limits(api: ScriptedApi) -> None:
    metadata: dict[str, Any] = {
        "plan": "pro",
        "credits": 12,
        "trial": False,
        "nested": {"a": 1},
        "none": None,
    }
    metadata |= {"bad key": "x", "long": "x" * 201} | {f"k{i}": f"v{i}" for i in range(40)}
    with quiet_client(api.url, sentry=False) as client:
        client.business_metrics.track_feature_usage("share", "clicked", metadata=metadata)
    [request] = api.received()
    tags = request.body["events"][0]["tags"]
    assert len(tags) == 32
    assert [tags["plan"], tags["credits"], tags["trial"]] == ["pro", "12", "false"]
    assert not {"nested", "none", "bad key", "long", "k29"} & set(tags)


def test_the_guides_calls_raise_as_the_calls_they_stand_for(api: ScriptedApi) -> None:
    with quiet_client(api.url, sentry=False) as client:
        metrics = client.business_metrics
        with pytest.raises(TypeError):
            metrics.track_revenue_event("subscription", 9.99)  # type: ignore[arg-type]  # a float loses digits
        with pytest.raises(ValueError, match="finite"):
            metrics.track_performance_metric("m", float("nan"))
        with pytest.raises(ValueError, match="unit"):
            metrics.track_performance_metric("m", 1, "u" * 33)
    assert api.received() == []


def test_a_breadcrumb_per_tracked_event_goes_to_sentry(api: ScriptedApi) -> None:
    sentry = RecordingSentry()
    with quiet_client(api.url, sentry=sentry) as client:
        ids = [
            client.business_metrics.track_revenue_event("subscription", "9.99"),
            client.business_metrics.track_performance_metric(
                "api.latency", 5000, metadata={"severity": "critical"}
            ),
            client.business_metrics.track_conversion_step("signed_up", "u1", {"funnel": "onboarding"}),
            client.track_feature_usage("share", "clicked"),
        ]
    assert [(b["category"], b["level"], b["message"], b["data"]["event_id"]) for b in sentry.breadcrumbs] == [
        ("business-metrics", "info", "revenue subscription", ids[0]),
        ("business-metrics", "error", "performance api.latency", ids[1]),
        ("business-metrics", "info", "conversion onboarding/signed_up", ids[2]),
        ("business-metrics", "info", "feature share", ids[3]),
    ]
    assert sentry.breadcrumbs[0]["data"]["amount"] == "9.99"


def test_by_default_breadcrumbs_go_to_sentry_sdk_once_it_is_initialised(api: ScriptedApi) -> None:
    with quiet_client(api.url) as client:
        client.business_metrics.track_feature_usage("share", "clicked")  # not initialised: nothing to do
        sentry_sdk.init(dsn=None)  # initialised, sending nowhere; its scope keeps breadcrumbs
        try:
            event_id = client.business_metrics.track_feature_usage("share", "clicked", "u1")
            crumbs = list(sentry_sdk.get_isolation_scope()._breadcrumbs)
        finally:
            sentry_sdk.get_client().close()
            sentry_sdk.get_isolation_scope().clear()
    assert [c["data"]["event_id"] for c in crumbs if c.get("category") == "business-metrics"] == [event_id]


def test_a_failing_sentry_never_breaks_tracking(api: ScriptedApi) -> None:
    class Broken:
        def add_breadcrumb(self, crumb: dict[str, Any]) -> None:
            raise RuntimeError("sentry is broken")

    with quiet_client(api.url, sentry=Broken()) as client:
        event_id = client.business_metrics.track_revenue_event("subscription", "9.99")
    assert api.event_ids() == [event_id]


@pytest.mark.kafka
def test_the_guides_scenario_on_the_pipeline(pipeline: Pipeline) -> None:
    """The guide's e2e scenario: a conversion step is tracked and waits; a revenue event is sent
    at once and takes it along; both are in metrics.events once."""
    pipeline.start("sink", "ingest")
    client = MetricsClient(pipeline.ingest_url, pipeline.write_key, flush_interval=3600.0, flush_at=10_000)
    try:
        step = client.business_metrics.track_conversion_step(
            "signup_completed", "py-guide-user", {"funnel": "onboarding"}
        )
        revenue = client.business_metrics.track_revenue_event(
            "subscription", "9.99", metadata={"plan": "pro"}
        )
        assert wait_for(lambda: client.delivered == 2, timeout=30), "revenue was not sent at once"
        assert client.pending == 0
    finally:
        assert client.close(timeout=10)

    def rows() -> list[list[object]]:
        return pipeline.query(
            "SELECT event_id, type, funnel, step, user_id, toString(amount), currency, tags['plan'] "
            "FROM metrics.events FINAL ORDER BY type"
        )

    assert wait_for(lambda: len(rows()) == 2, timeout=30), pipeline.log("sink")
    assert rows() == [
        [step, "conversion", "onboarding", "signup_completed", "py-guide-user", None, "", ""],
        [revenue, "revenue", "", "", "", "9.99", "USD", "pro"],
    ]
