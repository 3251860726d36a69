"""The monitoring guide's format (`POST /api/analytics/metrics`) on the ingest app with a fake
producer (no Kafka): how each of the guide's objects becomes an event, its defaults, units,
metadata as tags within the limits (the rest counted on /metrics), the derived event_id, write
keys, CORS, per-item rejections with the guide's field names, dead letters, and that any body
gets a 2xx or a 4xx with a reason, never a 5xx."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.guide_metrics import GUIDE_PATHS
from plumbing.keys import KeyStore
from tests.ingest.contract_strategies import examples
from tests.ingest.fakes import ServedIngest

PATH = GUIDE_PATHS[0]
ORIGIN = "https://app.cosnap.ai"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedIngest]:
    ingest = ServedIngest(tmp_path_factory.mktemp("guide") / "data", settings={"rate_limit_events_per_s": 0})
    ingest.start()
    yield ingest
    ingest.stop()


def post(api: ServedIngest, body: bytes | dict[str, Any], path: str = PATH, **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    sent = {"Authorization": f"Bearer {api.write_key}", "Content-Type": "application/json"} | headers
    response = httpx.post(f"{api.ingest_url}{path}", content=content, headers=sent, timeout=30)
    assert response.status_code < 500, response.text
    return response


def records(api: ServedIngest, topic: str) -> list[dict[str, Any]]:
    return [orjson.loads(r.value) for r in api.producer.records if r.topic == topic]


def events_of(api: ServedIngest, response: httpx.Response) -> list[dict[str, Any]]:
    request_id = response.headers["x-request-id"]
    return [
        event
        for envelope in records(api, api.topics.events)
        for event in envelope["events"]
        if event["request_id"] == request_id
    ]


def accepted(api: ServedIngest, *metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Post the objects, expect every one accepted, return their events in order."""
    response = post(api, {"metrics": list(metrics)})
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": len(metrics), "rejected": []}
    return events_of(api, response)


def now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


def dropped(api: ServedIngest) -> dict[str, float]:
    text = httpx.get(f"{api.ingest_url}/metrics", timeout=30).text
    found = re.findall(r'^cosnap_ingest_guide_dropped_total\{reason="(\w+)"\} (\S+)$', text, flags=re.M)
    return {reason: float(value) for reason, value in found}


# -- the four objects, their defaults -------------------------------------------------------------


def test_each_of_the_guides_objects_becomes_its_event(api: ServedIngest) -> None:
    at = now_ms()
    revenue, conversion, feature, performance = accepted(
        api,
        {"type": "revenue", "eventType": "subscription", "amount": 9.99, "timestamp": at, "metadata": {}},
        {"type": "conversion", "step": "photo_uploaded", "userId": "u1", "timestamp": at, "metadata": {}},
        {"type": "feature_usage", "feature": "ai_effect.anime", "action": "applied", "userId": "u1"},
        {"type": "performance", "metricName": "api.latency", "value": 123.4, "timestamp": at},
    )
    assert (revenue["type"], revenue["name"], revenue["amount"], revenue["currency"]) == (
        "revenue",
        "subscription",
        "9.99",
        "USD",
    )
    assert (conversion["funnel"], conversion["step"], conversion["user_id"]) == (
        "default",
        "photo_uploaded",
        "u1",
    )
    assert (feature["type"], feature["feature"], feature["action"], feature["user_id"]) == (
        "feature",
        "ai_effect.anime",
        "applied",
        "u1",
    )
    assert (performance["metric"], performance["value"], performance["unit"]) == ("api.latency", 123.4, "ms")
    sent = datetime.fromtimestamp(at / 1000, UTC)
    assert datetime.fromisoformat(revenue["timestamp"]) == sent  # Date.now(): milliseconds


def test_currency_is_upper_cased_and_amounts_keep_every_digit(api: ServedIngest) -> None:
    metric = b'{"type": "revenue", "eventType": "credits", "amount": 123456789.123456789, "currency": "eur"}'
    body = b'{"metrics": [' + metric + b"]}"
    response = post(api, body)
    assert response.status_code == 202, response.text
    [event] = events_of(api, response)
    assert (event["amount"], event["currency"]) == ("123456789.123456789", "EUR")


def test_known_units_are_normalised_and_other_short_units_kept(api: ServedIngest) -> None:
    units = ["ms", "Milliseconds", "sec", "%", "bytes", "fps", "MB", "frames/s"]
    metrics = [{"type": "performance", "metricName": "m", "value": 1, "unit": unit} for unit in units]
    events = accepted(api, *metrics)
    assert [event["unit"] for event in events] == [
        "ms",
        "ms",
        "s",
        "percent",
        "bytes",
        "fps",
        "MB",
        "frames/s",
    ]
    response = post(
        api, {"metrics": [{"type": "performance", "metricName": "m", "value": 1, "unit": "u" * 33}]}
    )
    assert response.status_code == 400
    assert response.json()["rejected"][0]["reason"].startswith("unit: ")


def test_a_funnel_in_metadata_names_the_conversions_funnel(api: ServedIngest) -> None:
    metadata = {"funnel": "onboarding", "plan": "pro"}
    [event] = accepted(api, {"type": "conversion", "step": "signed_up", "userId": "u2", "metadata": metadata})
    assert (event["funnel"], event["tags"]) == ("onboarding", {"plan": "pro"})


# -- metadata ----------------------------------------------------------------------------------


def test_metadata_becomes_tags_within_the_limits_and_the_rest_is_counted(api: ServedIngest) -> None:
    before = dropped(api)
    metadata: dict[str, Any] = {"provider": "openai", "severity": "critical", "retries": 3, "cached": False}
    metadata |= {"nested": {"a": 1}, "list": [1], "none": None, "bad key": "x", "long": "x" * 201}
    metadata |= {f"k{i}": str(i) for i in range(40)}
    metric = {"type": "feature_usage", "feature": "share", "action": "clicked", "metadata": metadata}
    [event] = accepted(api, metric | {"extra": 1, "sessionHint": "s"})
    tags = event["tags"]
    assert len(tags) == 32
    assert {k: tags[k] for k in ("provider", "severity", "retries", "cached")} == {
        "provider": "openai",
        "severity": "critical",
        "retries": "3",
        "cached": "false",
    }
    assert [f"k{i}" for i in range(28)] == [key for key in tags if key.startswith("k")]
    after = dropped(api)
    increase = {reason: after.get(reason, 0) - before.get(reason, 0) for reason in after}
    assert {reason: count for reason, count in increase.items() if count} == {
        "nested_value": 2,
        "null_value": 1,
        "bad_key": 1,
        "long_value": 1,
        "too_many_tags": 12,
        "unknown_field": 2,
    }


def test_metadata_that_is_no_object_is_dropped_and_counted(api: ServedIngest) -> None:
    before = dropped(api).get("bad_metadata", 0)
    [event] = accepted(api, {"type": "feature", "feature": "share", "action": "clicked", "metadata": "x"})
    assert event["tags"] == {}
    assert dropped(api)["bad_metadata"] == before + 1


# -- ids -----------------------------------------------------------------------------------------


def test_an_object_with_a_timestamp_has_an_id_of_its_content_so_a_retry_is_the_same_event(
    api: ServedIngest,
) -> None:
    at = now_ms()
    metric = {
        "type": "revenue",
        "eventType": "subscription",
        "amount": 4.99,
        "timestamp": at,
        "metadata": {"a": 1},
    }
    [first] = accepted(api, metric)
    reordered = {"metadata": {"a": 1}, "timestamp": at, "amount": 4.99, "eventType": "subscription"}
    [again] = accepted(api, reordered | {"type": "revenue"})
    [other] = accepted(api, metric | {"timestamp": at + 1})
    assert re.fullmatch(r"gm-[0-9a-f]{40}", first["event_id"])
    assert again["event_id"] == first["event_id"]
    assert other["event_id"] != first["event_id"]


def test_identical_objects_in_one_body_are_one_event(api: ServedIngest) -> None:
    metric = {"type": "feature_usage", "feature": "share", "action": "clicked", "timestamp": now_ms()}
    response = post(api, {"metrics": [metric, metric]})
    assert response.status_code == 202
    assert response.json() == {
        "accepted": 1,
        "rejected": [{"index": 1, "reason": "duplicate event_id in this batch"}],
    }


def test_an_eventid_is_the_event_id_and_without_timestamp_the_server_makes_one(api: ServedIngest) -> None:
    metric = {"type": "feature_usage", "feature": "share", "action": "clicked"}
    given_id, made, made_again = accepted(api, metric | {"eventId": "client-1"}, metric, metric)
    assert given_id["event_id"] == "client-1"
    assert made["event_id"] != made_again["event_id"]
    assert not made["event_id"].startswith("gm-")


# -- refusals --------------------------------------------------------------------------------------


def test_a_bad_object_is_rejected_in_the_guides_words_and_its_neighbours_accepted(api: ServedIngest) -> None:
    good = {"type": "feature_usage", "feature": "share", "action": "clicked"}
    metrics: list[Any] = [
        good,
        "not an object",
        {"type": "pageview"},
        {"type": "revenue", "eventType": "bad name!", "amount": 1},
        {"type": "conversion", "step": "s"},
        {"type": "performance", "metricName": "m", "value": "fast"},
        {"type": "revenue", "eventType": "r", "amount": 1, "currency": "XXX1"},
        {"type": "feature_usage", "feature": "f", "action": "a", "timestamp": "2001-01-01T00:00:00Z"},
        good,
    ]
    response = post(api, {"metrics": metrics})
    assert response.status_code == 202
    answer = response.json()
    assert answer["accepted"] == 2
    reasons = {r["index"]: r["reason"] for r in answer["rejected"]}
    assert reasons[1] == "a metric must be a JSON object"
    assert reasons[2] == "type must be revenue, conversion, feature_usage or performance"
    assert reasons[3].startswith("eventType: ")
    assert reasons[4] == "userId: required by a conversion"
    assert reasons[5].startswith("value: ")
    assert reasons[6].startswith("currency: ")
    assert reasons[7] == "timestamp too old"
    letters = [
        r for r in records(api, api.topics.dead_letter) if r["request_id"] == response.headers["x-request-id"]
    ]
    assert sorted(letter["index"] for letter in letters) == [1, 2, 3, 4, 5, 6, 7]
    assert {letter["reason"] for letter in letters} == set(reasons.values())


def test_no_accepted_object_is_a_400_with_the_reasons(api: ServedIngest) -> None:
    response = post(api, {"metrics": [{"type": "conversion", "step": "s"}]})
    assert response.status_code == 400
    assert response.json() == {
        "accepted": 0,
        "rejected": [{"index": 0, "reason": "userId: required by a conversion"}],
    }


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b"[]", 400, '{"metrics": [...]}'),
        (b'{"events": []}', 400, '{"metrics": [...]}'),
        (b'{"metrics": []}', 400, "non-empty"),
        (b"{not json", 400, "not valid JSON"),
        (json.dumps({"metrics": [{}] * 1001}).encode(), 413, "at most 1000"),
        (b'{"metrics": [{}], "api_key": 5}', 400, "api_key"),
    ],
)
def test_a_body_that_is_no_metrics_batch_is_refused_with_its_reason(
    api: ServedIngest, body: bytes, status: int, reason: str
) -> None:
    response = post(api, body)
    assert response.status_code == status
    assert reason in response.json()["detail"]


def test_the_write_key_is_that_of_v1_events(api: ServedIngest) -> None:
    body = {"metrics": [{"type": "feature_usage", "feature": "f", "action": "a"}]}
    assert post(api, body, Authorization="Bearer nope").status_code == 401
    assert post(api, body, Authorization="").status_code == 401
    beacon = json.dumps(body | {"api_key": api.write_key}).encode()
    assert post(api, beacon, Authorization="", **{"Content-Type": "text/plain"}).status_code == 202
    no_key = post(api, json.dumps(body).encode(), Authorization="", **{"Content-Type": "text/plain"})
    assert no_key.status_code == 415
    assert post(api, body, path=GUIDE_PATHS[1]).status_code == 202


def test_browsers_get_cors_like_v1_events(api: ServedIngest) -> None:
    web_key = KeyStore(api.data_dir / "write-keys.json").create("web", (ORIGIN,))
    preflight = httpx.options(f"{api.ingest_url}{PATH}", headers={"Origin": ORIGIN}, timeout=30)
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    body = {"metrics": [{"type": "feature_usage", "feature": "f", "action": "a"}]}
    posted = post(api, body, Authorization=f"Bearer {web_key}", Origin=ORIGIN)
    assert posted.status_code == 202
    assert posted.headers["access-control-allow-origin"] == ORIGIN
    assert post(api, body, Origin=ORIGIN).status_code == 403  # the test project does not list it


# -- any body ------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
FIELDS = ["type", "eventType", "amount", "currency", "step", "userId", "feature", "action", "metricName"]
FIELDS += ["value", "unit", "timestamp", "metadata", "eventId"]
field_values = st.one_of(
    json_values,
    st.sampled_from(["revenue", "conversion", "feature_usage", "feature", "performance", "USD", "ms", "fps"]),
    st.integers(min_value=now_ms() - 10**6, max_value=now_ms() + 10**6),
    st.dictionaries(st.text(max_size=70), json_values, max_size=40),
)
metric_objects = st.dictionaries(st.sampled_from(FIELDS), field_values, max_size=8) | json_values
bodies = (
    st.fixed_dictionaries(
        {"metrics": st.lists(metric_objects, max_size=6)}, optional={"api_key": json_values}
    )
    | json_values
)


@settings(
    max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=bodies)
def test_any_body_gets_a_2xx_or_a_4xx_with_a_reason(api: ServedIngest, body: Any) -> None:
    response = post(api, json.dumps(body).encode())
    answer = response.json()
    if response.status_code == 202 or "rejected" in answer:
        assert response.status_code in (202, 400)
        assert all(r["reason"] for r in answer["rejected"])
        assert answer["accepted"] + len(answer["rejected"]) == len(body["metrics"])
        assert (answer["accepted"] > 0) == (response.status_code == 202)
    else:
        assert 400 <= response.status_code < 500
        assert answer["detail"]


def test_events_of_the_guide_are_older_than_now_by_what_they_say(api: ServedIngest) -> None:
    at = datetime.now(UTC) - timedelta(hours=1)
    [event] = accepted(api, {"type": "feature", "feature": "f", "action": "a", "timestamp": at.isoformat()})
    assert datetime.fromisoformat(event["timestamp"]) == at.replace(microsecond=at.microsecond // 1000 * 1000)
