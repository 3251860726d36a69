"""No single record stops the worker: records written straight to the events topic (bypassing the
ingest) with a poison amount, a bad timestamp, a wrong type, no event id, a 2 MB string or no
envelope at all are dead-lettered by the worker with their reasons, and events after them are in
the windows within seconds (real Kafka, real chDB)."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer
from kafka import KafkaConsumer

from tests.conftest import Pipeline, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.e2e]


def stored(**fields: Any) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    base = {"event_id": uuid.uuid4().hex, "timestamp": now, "received_at": now, "request_id": "direct"}
    return base | fields


def revenue(amount: Any, **fields: Any) -> dict[str, Any]:
    return stored(type="revenue", name="subscription.renewal", amount=amount, currency="USD", **fields)


def worker_dead_letters(pipeline: Pipeline, expected: int) -> list[dict[str, Any]]:
    consumer = KafkaConsumer(
        pipeline.topics.dead_letter,
        bootstrap_servers=pipeline.env["COSNAP_KAFKA_BOOTSTRAP"],
        auto_offset_reset="earliest",
        consumer_timeout_ms=500,
    )
    found: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found.extend(orjson.loads(m.value) for m in consumer)
            mine = [d for d in found if "streams worker" in d["reason"] or d["index"] is not None]
            if len(mine) >= expected:
                return mine
    finally:
        consumer.close()
    return found


def test_records_the_ingest_would_never_write_are_dead_lettered_and_the_worker_goes_on(
    pipeline: Pipeline,
) -> None:
    pipeline.env |= {"COSNAP_WATERMARK_IDLE_S": "1", "COSNAP_WINDOW_GRACE_S": "1"}
    pipeline.start("sink", "streams")
    producer = Producer(
        {
            "bootstrap.servers": pipeline.env["COSNAP_KAFKA_BOOTSTRAP"],
            "acks": "all",
            "message.max.bytes": 4_000_000,
        }
    )
    good = stored(type="feature", feature="after.poison", action="seen")
    poisons = [
        revenue("0E+100000000"),  # the store cannot hold it: the worker refuses it, its neighbours count
        revenue("1E+40"),
        revenue("9.99", timestamp="not a time"),
        revenue("9.99", timestamp="2026-13-45T99:99:99Z"),
        revenue("9.99", event_id=""),
        stored(type="performance", metric="m", value=1e300, unit="ms"),
    ]
    records = [
        orjson.dumps({"v": 1, "project": "cosnap-test", "events": [*poisons, good]}),
        orjson.dumps({"v": 1, "project": "cosnap-test", "events": [revenue(["a", "list"])]}),  # wrong type
        orjson.dumps(
            {"v": 1, "project": "cosnap-test", "events": [stored(type="feature", feature="x" * 2_000_000)]}
        ),
        b"\xff not json at all",
        orjson.dumps({"v": 1, "project": "cosnap-test", "events": [good | {"event_id": uuid.uuid4().hex}]}),
    ]
    for value in records:
        producer.produce(pipeline.topics.events, key=b"cosnap-test", value=value)
    assert producer.flush(30) == 0
    # A record whose events all lie in the past closes its panes: a later one moves the clock.
    closer = stored(type="feature", feature="closer", action="x")
    closer["timestamp"] = (datetime.now(UTC) + timedelta(seconds=30)).isoformat().replace("+00:00", "Z")

    def counted() -> list[list[Any]]:
        return pipeline.query(
            "SELECT sum(count) FROM metrics.windows WHERE name = 'after.poison' AND granularity = '10s'"
        )

    deadline = time.monotonic() + 60
    while counted() != [[2]] and time.monotonic() < deadline:
        producer.produce(
            pipeline.topics.events,
            key=b"cosnap-test",
            value=orjson.dumps(
                {"v": 1, "project": "cosnap-test", "events": [closer | {"event_id": uuid.uuid4().hex}]}
            ),
        )
        producer.flush(30)
        time.sleep(1)
    assert counted() == [[2]], pipeline.log("streams")

    letters = worker_dead_letters(pipeline, 9)
    reasons = [d["reason"] for d in letters]
    assert sum("does not fit Decimal(38, 9)" in r for r in reasons) == 2, reasons
    assert sum("is not an RFC 3339 time" in r for r in reasons) == 2, reasons
    assert any("event_id is missing" in r for r in reasons), reasons
    assert any("beyond" in r for r in reasons), reasons
    # Records the worker cannot decode at all are set aside whole, with the decoder's reason.
    assert sum("streams worker could not read the envelope" in r for r in reasons) == 3, reasons
    assert any("length <= 128" in r for r in reasons), reasons
    assert all(len(d["raw"]) <= 16 * 1024 for d in letters)
    # The worker kept running: it never restarted its agent.
    assert "crashed" not in pipeline.log("streams").lower()
    assert wait_for(lambda: pipeline.processes["streams"].poll() is None, timeout=1)
