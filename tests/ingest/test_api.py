"""The ingest API: what a 202 means on a real broker, and what bad input gets (with a fake
producer: those answers do not depend on what Kafka holds)."""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from kafka import KafkaConsumer

from cosnap_metrics.broker import KafkaBroker
from tests.conftest import Pipeline
from tests.ingest.fakes import ServedIngest


@pytest.fixture
def ingest_on_kafka(pipeline: Pipeline) -> Iterator[Pipeline]:
    pipeline.start("ingest")
    yield pipeline


@pytest.fixture
def ingest(served: ServedIngest) -> ServedIngest:
    """The ingest app with a fake producer, started."""
    served.start()
    return served


def records(kafka: KafkaBroker, topic: str, expected: int, timeout_s: float = 15) -> list[Any]:
    consumer = KafkaConsumer(
        topic, bootstrap_servers=kafka.bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=1000
    )
    found: list[Any] = []
    try:
        deadline = datetime.now(UTC) + timedelta(seconds=timeout_s)
        while len(found) < expected and datetime.now(UTC) < deadline:
            found.extend(orjson.loads(message.value) for message in consumer)
    finally:
        consumer.close()
    return found


def post(p: Pipeline | ServedIngest, body: Any, **headers: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {p.write_key}", "Content-Type": "application/json"} | headers
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{p.ingest_url}/v1/events", content=content, headers=headers, timeout=30)


REVENUE = {
    "type": "revenue",
    "name": "subscription.renewal",
    "amount": "9.99",
    "currency": "USD",
    "user_id": "u1",
}


@pytest.mark.kafka
def test_accepted_events_are_one_envelope_in_kafka(ingest_on_kafka: Pipeline, kafka: KafkaBroker) -> None:
    sent_at = datetime.now(UTC) + timedelta(hours=1)  # the client's clock runs an hour ahead
    batch = {
        "events": [
            REVENUE | {"event_id": "a1", "timestamp": (sent_at - timedelta(seconds=30)).isoformat()},
            {"event_id": "a2", "type": "performance", "metric": "api.latency", "value": 123.4, "unit": "ms"},
        ],
        "sent_at": sent_at.isoformat(),
    }
    response = post(ingest_on_kafka, batch)
    assert response.status_code == 202
    assert response.json() == {"accepted": 2, "rejected": []}
    [envelope] = records(kafka, ingest_on_kafka.topics.events, 1)
    assert envelope["project"] == "cosnap-test"
    assert [e["event_id"] for e in envelope["events"]] == ["a1", "a2"]
    assert {e["request_id"] for e in envelope["events"]} == {response.headers["X-Request-ID"]}
    received = datetime.fromisoformat(envelope["events"][0]["received_at"])
    corrected = datetime.fromisoformat(envelope["events"][0]["timestamp"])
    assert abs((received - corrected) - timedelta(seconds=30)) < timedelta(seconds=2)
    assert envelope["events"][0]["amount"] == "9.99"


@pytest.mark.kafka
def test_bad_items_are_rejected_with_reasons_and_neighbours_kept(
    ingest_on_kafka: Pipeline, kafka: KafkaBroker
) -> None:
    batch = {
        "events": [
            REVENUE | {"event_id": "ok-1"},
            REVENUE | {"event_id": "bad-currency", "currency": "usd"},
            {"event_id": "bad-type", "type": "pageview"},
            {"event_id": "nan", "type": "performance", "metric": "m", "value": "NaN", "unit": "ms"},
            REVENUE | {"event_id": "ok-1"},
            REVENUE
            | {"event_id": "future", "timestamp": (datetime.now(UTC) + timedelta(days=2)).isoformat()},
            REVENUE | {"event_id": "ok-2"},
        ]
    }
    response = post(ingest_on_kafka, batch)
    assert response.status_code == 202
    body = response.json()
    assert body["accepted"] == 2
    reasons = {r["index"]: r["reason"] for r in body["rejected"]}
    assert set(reasons) == {1, 2, 3, 4, 5}
    assert "ISO 4217" in reasons[1]
    assert "duplicate event_id" in reasons[4]
    assert "future" in reasons[5]
    dead = records(kafka, ingest_on_kafka.topics.dead_letter, 5)
    assert sorted(d["index"] for d in dead) == [1, 2, 3, 4, 5]
    assert all(d["reason"] and d["raw"] for d in dead)


def test_nothing_accepted_is_400_with_the_same_body(ingest: ServedIngest) -> None:
    response = post(ingest, {"events": [{"type": "revenue"}]})
    assert response.status_code == 400
    assert response.json()["accepted"] == 0
    assert response.json()["rejected"][0]["index"] == 0


def test_a_dead_letter_kafka_refuses_does_not_change_the_answer(ingest: ServedIngest) -> None:
    ingest.producer.failing = True
    response = post(ingest, {"events": [{"type": "revenue"}]})
    assert response.status_code == 400
    assert response.json()["accepted"] == 0
    assert response.json()["rejected"][0]["index"] == 0
    assert ingest.producer.records == []


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (b"{not json", {}, 400),
        (b"[1, 2]", {}, 400),
        (b'{"events": []}', {}, 400),
        (json.dumps({"events": [REVENUE] * 1001}).encode(), {}, 413),
        (b"x" * (1024 * 1024 + 1), {}, 413),
        (json.dumps(REVENUE).encode(), {"Content-Type": "application/x-www-form-urlencoded"}, 415),
        (json.dumps(REVENUE).encode(), {"Content-Type": "text/plain"}, 415),
        (json.dumps(REVENUE).encode(), {"Authorization": "Bearer cmk_wrong"}, 401),
        (json.dumps(REVENUE).encode(), {"Authorization": ""}, 401),
        (json.dumps(REVENUE).encode(), {"Content-Encoding": "br"}, 415),
    ],
    ids=["malformed", "array", "empty-batch", "1001-events", "over-1MiB", "form", "beacon-no-key",
         "wrong-key", "no-key", "brotli"],
)  # fmt: skip
def test_bad_bodies_get_a_clear_4xx(
    ingest: ServedIngest, body: bytes, headers: dict[str, str], status: int
) -> None:
    response = post(ingest, body, **headers)
    assert response.status_code == status
    assert response.json()["detail"]


def test_gzip_and_its_bomb_guard(ingest: ServedIngest) -> None:
    ok = post(ingest, gzip.compress(json.dumps(REVENUE).encode()), **{"Content-Encoding": "gzip"})
    assert ok.status_code == 202
    bomb = gzip.compress(b" " * (20 * 1024 * 1024))  # 20 MiB of whitespace in ~20 KiB
    refused = post(ingest, bomb, **{"Content-Encoding": "gzip"})
    assert refused.status_code == 413


def test_other_ways_to_present_the_write_key(ingest: ServedIngest) -> None:
    basic = base64.b64encode(f"{ingest.write_key}:".encode()).decode()
    assert post(ingest, REVENUE, Authorization=f"Basic {basic}").status_code == 202
    beacon = REVENUE | {"api_key": ingest.write_key}
    assert post(ingest, beacon, Authorization="", **{"Content-Type": "text/plain"}).status_code == 202


def test_openapi_documents_the_event_schema(ingest: ServedIngest) -> None:
    schema = httpx.get(f"{ingest.ingest_url}/openapi.json").json()
    assert {"RevenueEvent", "ConversionEvent", "FeatureEvent", "PerformanceEvent", "EventBatch"} <= set(
        schema["components"]["schemas"]
    )
