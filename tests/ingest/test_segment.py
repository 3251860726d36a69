"""Segment's Tracking API on the ingest app with a fake producer (no Kafka): routes, write keys,
size limits, gzip, the answer's shape, how each message becomes an event (the default mapping),
messageId as event_id, the clock rule, identify/group/alias records, dead letters, and that any
body gets a 2xx or a 4xx with a reason, never a 5xx."""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.segment_messages import MAX_MESSAGE_BYTES
from tests.ingest.contract_strategies import examples
from tests.ingest.fakes import ServedIngest

SINGLE = ["track", "page", "screen", "identify", "group", "alias"]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedIngest]:
    ingest = ServedIngest(
        tmp_path_factory.mktemp("segment") / "data", settings={"rate_limit_events_per_s": 0}
    )
    ingest.start()
    yield ingest
    ingest.stop()


def basic(key: str) -> dict[str, str]:
    """The header Segment's libraries send: HTTP Basic with the write key as user, no password."""
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def post(api: ServedIngest, path: str, body: bytes | dict[str, Any], **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    sent = basic(api.write_key) | {"Content-Type": "application/json"} | headers
    response = httpx.post(f"{api.ingest_url}{path}", content=content, headers=sent, timeout=30)
    assert response.status_code < 500, response.text
    return response


def records(api: ServedIngest, topic: str) -> list[dict[str, Any]]:
    return [orjson.loads(r.value) for r in api.producer.records if r.topic == topic]


def events_of(api: ServedIngest, request_id: str) -> list[dict[str, Any]]:
    return [
        event
        for envelope in records(api, api.topics.events)
        for event in envelope["events"]
        if event["request_id"] == request_id
    ]


def sent(api: ServedIngest, path: str, body: bytes | dict[str, Any]) -> list[dict[str, Any]]:
    """Post `body`, expect Segment's success, return the events it became."""
    response = post(api, path, body)
    assert response.status_code == 200, response.text
    assert response.json()["success"] is True
    return events_of(api, response.headers["x-request-id"])


def now() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


# -- routes, keys, shapes ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", SINGLE)
def test_each_single_call_is_answered_as_segment_answers(api: ServedIngest, kind: str) -> None:
    message = {
        "userId": "u1",
        "messageId": f"single-{kind}",
        "event": "Photo Shared",
        "name": "Pricing",
        "groupId": "g1",
        "previousId": "anon-1",
        "traits": {"plan": "pro"},
    }
    response = post(api, f"/v1/{kind}", message)
    assert response.status_code == 200
    assert response.json() == {"success": True, "accepted": 1, "rejected": []}


def test_the_write_key_may_be_basic_bearer_or_in_the_body(api: ServedIngest) -> None:
    message = {"userId": "u1", "event": "Photo Shared"}
    assert post(api, "/v1/track", message, Authorization=f"Bearer {api.write_key}").status_code == 200
    body = message | {"writeKey": api.write_key}
    bare = httpx.post(f"{api.ingest_url}/v1/track", json=body, timeout=30)
    assert bare.status_code == 200, bare.text
    batch = httpx.post(f"{api.ingest_url}/v1/batch", json={"batch": [message], "writeKey": api.write_key})
    assert batch.status_code == 200, batch.text


@pytest.mark.parametrize(
    ("headers", "body_key", "message"),
    [
        ({}, None, "missing write key"),
        (basic("cmk_not-a-key"), None, "unknown write key"),
        ({}, "cmk_not-a-key", "unknown write key"),
        ({"Authorization": "Basic %%%"}, None, "malformed Basic credentials"),
    ],
)
def test_a_refused_key_gets_segments_error_shape(
    api: ServedIngest, headers: dict[str, str], body_key: str | None, message: str
) -> None:
    body: dict[str, Any] = {"userId": "u1", "event": "Photo Shared"}
    if body_key:
        body["writeKey"] = body_key
    response = httpx.post(f"{api.ingest_url}/v1/track", json=body, headers=headers, timeout=30)
    assert response.status_code == 401
    assert response.json() == {"success": False, "code": "unauthorized", "message": message}


def test_size_limits_are_segments(api: ServedIngest) -> None:
    padding = "x" * MAX_MESSAGE_BYTES
    single = post(api, "/v1/track", {"userId": "u1", "event": "Big", "properties": {"p": padding}})
    assert single.status_code == 400
    assert single.json()["message"] == f"body over {MAX_MESSAGE_BYTES} bytes"
    messages = [{"type": "track", "userId": "u1", "event": "Big", "properties": {"p": "x" * 30_000}}] * 20
    too_big = post(api, "/v1/batch", {"batch": messages})
    assert too_big.status_code == 400 and too_big.json()["message"] == "body over 512000 bytes"
    one_big = [
        {"type": "track", "userId": "u1", "event": "Small", "messageId": "size-ok"},
        {"type": "track", "userId": "u1", "event": "Big", "properties": {"p": padding}},
    ]
    answer = post(api, "/v1/batch", {"batch": one_big}).json()
    assert answer["accepted"] == 1
    assert [r["index"] for r in answer["rejected"]] == [1]
    assert answer["rejected"][0]["reason"].endswith("at most 32768 (32 KB)")


def test_gzip_bodies_are_read_and_bombs_refused(api: ServedIngest) -> None:
    batch = {"batch": [{"type": "track", "userId": "u1", "event": "Zipped", "messageId": "gz-1"}]}
    zipped = post(api, "/v1/batch", gzip.compress(json.dumps(batch).encode()), **{"Content-Encoding": "gzip"})
    assert zipped.status_code == 200 and zipped.json()["accepted"] == 1
    bomb = gzip.compress(b'{"batch": [' + b" " * 10_000_000 + b"]}")
    refused = post(api, "/v1/batch", bomb, **{"Content-Encoding": "gzip"})
    assert refused.status_code == 400 and "decompressed body over" in refused.json()["message"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{", "body is not valid JSON"),
        (b"[]", "body must be a message object"),
        (b'{"batch": {}}', "batch must be an array of messages"),
        (b'{"batch": [], "sentAt": "yesterday"}', "sentAt must be an RFC 3339 timestamp"),
        (b'{"batch": [{"a": NaN}]}', "body is not valid JSON"),
    ],
)
def test_a_body_that_is_no_batch_is_a_400_with_its_reason(
    api: ServedIngest, body: bytes, message: str
) -> None:
    response = post(api, "/v1/batch", body)
    assert response.status_code == 400
    answer = response.json()
    assert answer["success"] is False and answer["code"] == "bad_request"
    assert answer["message"].startswith(message)


def test_kafka_down_is_a_503_to_retry_and_nothing_is_answered_200(api: ServedIngest) -> None:
    api.producer.failing = True
    try:
        batch = {
            "batch": [{"type": "track", "userId": "u1", "event": "X"}, {"type": "identify", "userId": "u1"}]
        }
        response = httpx.post(
            f"{api.ingest_url}/v1/batch", json=batch, headers=basic(api.write_key), timeout=30
        )
    finally:
        api.producer.failing = False
    assert response.status_code == 503 and response.headers["retry-after"] == "5"
    assert response.json()["code"] == "unavailable"


def test_the_rate_limit_answers_429_with_retry_after(tmp_path: Path) -> None:
    # One event per 20 s: the bucket stays empty for the second post however slow the machine.
    settings = {"rate_limit_events_per_s": 0.05, "rate_limit_burst": 1}
    limited = ServedIngest(tmp_path / "data", settings=settings)
    limited.start()
    try:
        batch = {"batch": [{"type": "track", "userId": "u1", "event": "X"}] * 3}
        assert post(limited, "/v1/batch", batch).status_code == 200  # the whole burst
        response = post(limited, "/v1/batch", batch)
    finally:
        limited.stop()
    assert response.status_code == 429 and response.headers["retry-after"]
    assert response.json()["code"] == "rate_limited"


# -- messages as events -------------------------------------------------------------------------------


def test_a_revenue_order_keeps_every_digit_of_its_json_number(api: ServedIngest) -> None:
    body = (
        b'{"userId": "u1", "event": "Order Completed", "messageId": "order-1",'
        b' "properties": {"revenue": 123456789.123456789, "total": 5, "currency": "eur", "order_id": "o-1"}}'
    )
    [event] = sent(api, "/v1/track", body)
    assert event["type"] == "revenue" and event["name"] == "order_completed"
    assert event["amount"] == "123456789.123456789" and event["currency"] == "EUR"
    assert event["event_id"] == "order-1" and event["tags"]["order_id"] == "o-1"


def test_total_counts_without_revenue_usd_by_default_and_refunds_negatively(api: ServedIngest) -> None:
    batch = {
        "batch": [
            {"type": "track", "userId": "u1", "event": "Order Completed", "properties": {"total": "19.990"}},
            {"type": "track", "userId": "u1", "event": "Order Refunded", "properties": {"total": 19.99}},
        ]
    }
    order, refund = sent(api, "/v1/batch", batch)
    assert (order["amount"], order["currency"]) == ("19.99", "USD")
    assert (refund["type"], refund["amount"]) == ("revenue", "-19.99")


def test_checkout_steps_performance_features_pages_and_screens(api: ServedIngest) -> None:
    batch = {
        "batch": [
            {"type": "track", "anonymousId": "a1", "event": "Checkout Started"},
            {"type": "track", "anonymousId": "a1", "event": "payment info entered"},
            {"type": "track", "anonymousId": "a1", "event": "Order Completed"},
            {
                "type": "track",
                "userId": "u1",
                "event": "Generation Completed",
                "properties": {"duration_ms": 812.5},
            },
            {"type": "track", "userId": "u1", "event": "Style Selected!", "properties": {"plan": "pro"}},
            {"type": "page", "userId": "u1", "name": "Pricing Page"},
            {"type": "screen", "userId": "u1"},
        ]
    }
    started, payment, completed, generation, feature, page, screen = sent(api, "/v1/batch", batch)
    assert [(e["funnel"], e["step"], e["step_index"]) for e in (started, payment, completed)] == [
        ("checkout", "checkout_started", 0),
        ("checkout", "payment_info_entered", 3),
        ("checkout", "order_completed", 4),
    ]
    assert (generation["metric"], generation["value"], generation["unit"]) == (
        "ai.generation_time",
        812.5,
        "ms",
    )
    assert (feature["feature"], feature["action"], feature["tags"]["plan"]) == (
        "style_selected",
        "tracked",
        "pro",
    )
    assert (page["feature"], page["action"]) == ("pricing_page", "viewed")
    assert (screen["feature"], screen["action"]) == ("screen", "viewed")
    assert {e["source"] for e in (started, feature, page)} == {"segment"}


def test_context_gives_release_environment_and_library_tags(api: ServedIngest) -> None:
    context = {"library": {"name": "analytics-python", "version": "2.4.0"}, "app": {"version": "3.1.4"}}
    batch = {
        "batch": [{"type": "track", "userId": "u1", "event": "X", "context": {"environment": "staging"}}],
        "context": context,
    }
    [event] = sent(api, "/v1/batch", batch)
    assert (event["release"], event["environment"]) == ("3.1.4", "staging")
    assert event["tags"] == {"segment.library": "analytics-python", "segment.library_version": "2.4.0"}


def test_a_message_id_too_long_for_an_event_id_is_digested_the_same_way_each_time(api: ServedIngest) -> None:
    message = {"userId": "u1", "event": "X", "messageId": "m" * 100}
    [first] = sent(api, "/v1/track", message)
    [again] = sent(api, "/v1/track", message)
    assert first["event_id"] == again["event_id"] and first["event_id"].startswith("seg-")
    assert len(first["event_id"]) == 44


def test_timestamps_are_corrected_for_the_clients_clock(api: ServedIngest) -> None:
    ahead = now() + timedelta(hours=2)  # a client clock two hours fast
    batch = {
        "batch": [
            {"type": "track", "userId": "u1", "event": "A", "timestamp": iso(ahead - timedelta(minutes=1))},
            {
                "type": "track",
                "userId": "u1",
                "event": "B",
                "originalTimestamp": iso(ahead - timedelta(minutes=2)),
            },
            # Its own sentAt (a client right on time) wins over the batch's.
            {
                "type": "track",
                "userId": "u1",
                "event": "C",
                "timestamp": iso(now() - timedelta(minutes=3)),
                "sentAt": iso(now()),
            },
        ],
        "sentAt": iso(ahead),
    }
    events = sent(api, "/v1/batch", batch)
    ages = [(now() - datetime.fromisoformat(e["timestamp"])).total_seconds() for e in events]
    for age, expected in zip(ages, (60, 120, 180), strict=True):
        assert expected - 5 < age < expected + 5, ages


def test_a_bad_message_is_dead_lettered_and_its_neighbours_accepted(api: ServedIngest) -> None:
    old = iso(now() - timedelta(days=40))
    batch = {
        "batch": [
            {"type": "track", "userId": "u1", "event": "Fine", "messageId": "dl-ok"},
            {"type": "track", "userId": "u1", "messageId": "dl-no-name"},
            {"type": "track", "userId": "u1", "event": "Old", "timestamp": old},
            {"type": "track", "userId": "u1", "event": "Order Completed", "properties": {"revenue": "1e999"}},
            {"type": "track", "event": "Checkout Started"},
            {"type": "launch", "userId": "u1"},
            "not a message",
            {"type": "track", "userId": "u1", "event": "Fine", "messageId": "dl-ok"},
        ]
    }
    response = post(api, "/v1/batch", batch)
    assert response.status_code == 200
    answer = response.json()
    reasons = {r["index"]: r["reason"] for r in answer["rejected"]}
    assert answer["accepted"] == 1
    assert reasons == {
        1: "event: a track needs the event's name, with a letter or digit",
        2: "timestamp too old",
        3: "amount: Value error, amount has an exponent out of range (at most ±64)",
        4: "Value error, a conversion event needs user_id or anonymous_id",
        5: "type must be track, page, screen, identify, group or alias",
        6: "a message must be a JSON object",
        7: "duplicate event_id in this batch",
    }
    letters = [
        letter
        for letter in records(api, api.topics.dead_letter)
        if letter["request_id"] == response.headers["x-request-id"]
    ]
    assert sorted(letter["index"] for letter in letters) == sorted(reasons)
    assert any(json.loads(letter["raw"]) == "not a message" for letter in letters)


def test_identify_group_and_alias_are_stored_with_their_traits(api: ServedIngest) -> None:
    batch = {
        "batch": [
            {
                "type": "identify",
                "userId": "u1",
                "messageId": "t-1",
                "traits": {"plan": "pro", "credits": 12.50},
            },
            {"type": "group", "anonymousId": "a1", "groupId": 42, "messageId": "t-2", "traits": {"seats": 5}},
            {"type": "alias", "userId": "u1", "previousId": "a1", "messageId": "t-3"},
            {"type": "alias", "userId": "u1"},
            {"type": "identify", "traits": {"plan": "pro"}},
            {"type": "group", "userId": "u1", "traits": ["seats"], "groupId": "g"},
        ],
        "context": {"library": {"name": "analytics-node"}},
    }
    text = json.dumps(batch).replace('"credits": 12.5', '"credits": 12.50')  # as a client wrote it
    response = post(api, "/v1/batch", text.encode())
    answer = response.json()
    assert response.status_code == 200 and answer["accepted"] == 3
    assert {r["index"]: r["reason"] for r in answer["rejected"]} == {
        3: "alias needs previousId and userId",
        4: "identify needs userId or anonymousId",
        5: "traits must be an object",
    }
    [record] = [r for r in records(api, api.topics.traits) if r["messages"][0]["message_id"] == "t-1"]
    identify, group, alias = record["messages"]
    assert json.loads(identify["traits"]) == {"plan": "pro", "credits": 12.5}
    assert '"credits":12.50' in identify["traits"]  # the number as sent
    assert json.loads(identify["context"]) == {"library": {"name": "analytics-node"}}
    assert (group["group_id"], group["anonymous_id"]) == ("42", "a1")
    assert (alias["type"], alias["previous_id"], alias["user_id"]) == ("alias", "a1", "u1")


# -- any body ------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = ["type", "event", "name", "userId", "anonymousId", "messageId", "properties", "traits", "context"]
FIELDS += ["timestamp", "originalTimestamp", "sentAt", "groupId", "previousId"]
field_values = st.one_of(
    json_values,
    st.sampled_from(
        SINGLE + ["Order Completed", "Checkout Started", "Generation Completed", "2026-01-01T00:00:00Z"]
    ),
    st.fixed_dictionaries(
        {}, optional={"revenue": json_values, "total": json_values, "currency": json_values}
    ),
    st.fixed_dictionaries({}, optional={"duration_ms": json_values, "plan": json_values}),
    st.fixed_dictionaries(
        {}, optional={"app": json_values, "library": json_values, "environment": json_values}
    ),
)
messages = st.dictionaries(st.sampled_from(FIELDS), field_values, max_size=8) | json_values
bodies = st.one_of(
    st.fixed_dictionaries(
        {"batch": st.lists(messages, max_size=6)},
        optional={"sentAt": field_values, "context": field_values, "writeKey": json_values},
    ),
    messages,
)


@settings(
    max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=bodies, path=st.sampled_from(["/v1/batch", "/v1/import", *(f"/v1/{kind}" for kind in SINGLE)]))
def test_any_body_gets_a_2xx_or_a_4xx_with_a_reason(api: ServedIngest, body: Any, path: str) -> None:
    response = post(api, path, json.dumps(body).encode())
    answer = response.json()
    if response.status_code == 200:
        assert answer["success"] is True
        assert all(r["reason"] for r in answer["rejected"])
        count = len(body["batch"]) if path in ("/v1/batch", "/v1/import") else 1
        assert answer["accepted"] + len(answer["rejected"]) == count
    else:
        assert 400 <= response.status_code < 500
        assert answer["success"] is False and answer["message"]


def test_the_ingest_reads_the_mapping_file_it_is_given(tmp_path: Path) -> None:
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(
        "source: web\n"
        "revenue: {properties: [price], default_currency: EUR}\n"
        "funnels: {signup: [Signup Started, Signup Finished]}\n"
        "performance: [{event: Video Buffered, metric: video.buffer, property: seconds, unit: s}]\n"
        "feature: {track_action: used}\n"
    )
    custom = ServedIngest(tmp_path / "data", settings={"segment_mapping_file": mapping})
    custom.start()
    try:
        batch = {
            "batch": [
                {
                    "type": "track",
                    "userId": "u1",
                    "event": "Bought",
                    "properties": {"price": 3, "revenue": 9},
                },
                {"type": "track", "userId": "u1", "event": "Signup Finished"},
                {"type": "track", "userId": "u1", "event": "Video Buffered", "properties": {"seconds": 1.5}},
                {"type": "track", "userId": "u1", "event": "Checkout Started"},
            ]
        }
        bought, signup, video, checkout = sent(custom, "/v1/batch", batch)
    finally:
        custom.stop()
    assert (bought["amount"], bought["currency"], bought["source"]) == ("3", "EUR", "web")
    assert (signup["funnel"], signup["step"], signup["step_index"]) == ("signup", "signup_finished", 1)
    assert (video["metric"], video["value"], video["unit"]) == ("video.buffer", 1.5, "s")
    assert (checkout["type"], checkout["feature"], checkout["action"]) == (
        "feature",
        "checkout_started",
        "used",
    )
