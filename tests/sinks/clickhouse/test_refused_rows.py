"""The sink never blocks on a row: records written straight to the topics (bypassing the ingest)
with values ClickHouse refuses are dead-lettered with the engine's reason, their neighbours and
everything after them land, and the offsets move on."""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
import orjson
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from cosnap_metrics.broker import KafkaBroker
from tests.conftest import Pipeline, wait_for

pytestmark = [pytest.mark.kafka]

NOW = "2026-11-27T10:00:00.000Z"


def stored_event(event_id: str, amount: str) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "type": "revenue",
        "name": "subscription.renewal",
        "amount": amount,
        "currency": "USD",
        "timestamp": NOW,
        "received_at": NOW,
        "request_id": f"req-{event_id}",
    }


WINDOW = {
    "v": 1, "project": "p", "type": "revenue", "name": "n", "currency": "USD", "dims": {},
    "series_id": "s", "granularity": "1m", "window_start": "2026-11-27T10:00:00Z",
    "window_end": "2026-11-27T10:01:00Z", "count": 1, "sum": "5", "min": "5", "max": "5", "mean": 5.0,
    "emitted_at": "2026-11-27T10:01:30Z",
}  # fmt: skip
ALERT = {
    "v": 1, "fingerprint": "f1", "rule": "r", "state": "firing", "severity": "critical",
    "labels": {"project": "p", "alertname": "r"}, "annotations": {}, "value": 1.0, "threshold": 0.5,
    "starts_at": NOW, "ends_at": None, "evaluated_at": NOW, "emitted_at": NOW,
}  # fmt: skip


def dead_letters(kafka: KafkaBroker, topic: str, expected: int, timeout_s: float = 30) -> list[Any]:
    consumer = KafkaConsumer(
        topic, bootstrap_servers=kafka.bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=500
    )
    found: list[Any] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(found) < expected and time.monotonic() < deadline:
            found.extend((orjson.loads(m.value), dict(m.headers)) for m in consumer)
    finally:
        consumer.close()
    return found


def committed(kafka: KafkaBroker, group: str) -> dict[str, int]:
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    try:
        offsets = admin.list_group_offsets(group)[group]
    finally:
        admin.close()
    totals: dict[str, int] = {}
    for tp, meta in offsets.items():
        totals[tp.topic] = totals.get(tp.topic, 0) + max(meta.offset, 0)
    return totals


def test_poison_records_are_dead_lettered_and_the_rest_lands(pipeline: Pipeline, kafka: KafkaBroker) -> None:
    topics = pipeline.topics
    pipeline.start("sink", "ingest")
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all")
    poison = {"0E+100000000": 1, "1E+40": 3}  # amount -> its place in the envelope
    events = [stored_event(f"n{i}", "2.5") for i in range(5)]
    for amount, place in poison.items():
        events[place] = stored_event(f"poison-{place}", amount)
    bad_time = stored_event("bad-time", "1") | {"timestamp": "half past ten"}
    wrong_type = stored_event("wrong-type", "1") | {"amount": {"nested": True}}
    for value in (
        {"v": 1, "project": "attacker", "events": events},
        {"v": 1, "project": "attacker", "events": [bad_time, wrong_type]},
    ):
        producer.send(topics.events, key=b"attacker", value=orjson.dumps(value))
    producer.send(topics.aggregates, value=orjson.dumps(WINDOW | {"sum": "1E+40"}))
    producer.send(topics.aggregates, value=orjson.dumps(WINDOW | {"series_id": "good"}))
    producer.send(topics.alerts, value=orjson.dumps(ALERT | {"starts_at": "never"}))
    producer.send(topics.alerts, value=orjson.dumps(ALERT | {"fingerprint": "good"}))
    producer.flush()
    producer.close()

    # A normal event posted after the poison lands within seconds.
    posted = time.monotonic()
    response = httpx.post(
        f"{pipeline.ingest_url}/v1/events",
        headers={"Authorization": f"Bearer {pipeline.write_key}"},
        json={"type": "revenue", "name": "subscription.renewal", "amount": "9.99", "currency": "USD"},
    )
    assert response.status_code == 202, response.text
    landed = wait_for(
        lambda: pipeline.query("SELECT count() FROM metrics.events WHERE project = 'cosnap-test'") == [[1]],
        timeout=15,
    )
    assert landed, pipeline.log("sink")
    assert time.monotonic() - posted < 15

    letters = dead_letters(kafka, topics.dead_letter, expected=6)
    assert len(letters) == 6, letters
    # request_id is topic:partition:offset of the record, index the row's place in it
    by_place = {
        (letter["request_id"].split(":")[0], int(letter["request_id"].split(":")[2]), letter["index"]): (
            letter,
            headers,
        )
        for letter, headers in letters
    }
    for amount, place in poison.items():
        letter, headers = by_place[(topics.events, 0, place)]
        assert letter["project"] == "attacker"
        assert letter["reason"].startswith("ClickHouse refused the row for metrics.events: ")
        assert "Decimal value is too big" in letter["reason"]
        assert "(ARGUMENT_OUT_OF_BOUND)" in letter["reason"]
        assert orjson.loads(letter["raw"])["amount"] == amount
        assert headers["cosnap-request-ids"] == f"req-poison-{place}".encode()
    assert "(CANNOT_PARSE_DATETIME)" in by_place[(topics.events, 1, 0)][0]["reason"]
    assert "wrong-type" in by_place[(topics.events, 1, 1)][0]["raw"]
    assert "metrics.aggregates" in by_place[(topics.aggregates, 0, 0)][0]["reason"]
    assert "metrics.alerts" in by_place[(topics.alerts, 0, 0)][0]["reason"]

    # The neighbours landed, and every record's offset was committed.
    assert pipeline.query(
        "SELECT event_id, toString(amount) FROM metrics.events WHERE project = 'attacker' ORDER BY event_id"
    ) == [["n0", "2.5"], ["n2", "2.5"], ["n4", "2.5"]]
    assert pipeline.query("SELECT series_id FROM metrics.aggregates") == [["good"]]
    assert pipeline.query("SELECT fingerprint FROM metrics.alerts") == [["good"]]
    group = f"{topics.internal}sink"
    want = {topics.events: 3, topics.aggregates: 2, topics.alerts: 2}

    def of_these_topics() -> dict[str, int]:  # the sink consumes other topics as well
        offsets = committed(kafka, group)
        return {topic: offsets.get(topic, 0) for topic in want}

    assert wait_for(lambda: of_these_topics() == want, timeout=10), committed(kafka, group)

    metrics = httpx.get(f"{pipeline.query_url}/metrics").text
    for topic, count in {topics.events: 4, topics.aggregates: 1, topics.alerts: 1}.items():
        assert f'cosnap_sink_dead_letters_total{{reason="refused",topic="{topic}"}} {count}.0' in metrics
    # Beside them, the engine's own memory figures (sinks/clickhouse/metrics.py, StoreMemory).
    assert re.search(r'^cosnap_sink_store_memory_bytes\{metric="MemoryTracking"\} [1-9]', metrics, re.M)
    assert re.search(r'^cosnap_sink_store_rows\{table="events"\} [1-9]', metrics, re.M)
    assert re.search(r'^cosnap_sink_store_allocator_bytes\{kind="resident"\} [1-9]', metrics, re.M)
    health = httpx.get(f"{pipeline.query_url}/health").json()
    assert health["status"] == "healthy", health
