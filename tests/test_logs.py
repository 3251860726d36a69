"""Structured logs end to end: a request id sent with an HTTP request is echoed, travels in the
Kafka headers of the envelope holding the request's events, and names the request in the JSON
log lines of the ingest API and of the streams worker and sink acting on its records."""

from __future__ import annotations

import json
import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from cosnap_metrics.broker import KafkaBroker
from schemas.records import REQUEST_IDS_HEADER, request_ids_header
from tests.conftest import Pipeline, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.e2e]

BASE_FIELDS = {"timestamp", "level", "logger", "message", "service"}


def log_lines(pipeline: Pipeline, name: str) -> list[dict[str, Any]]:
    """Every line of a service's log, each parsed as JSON (a line that is not JSON fails)."""
    lines = []
    for line in (pipeline.logs / f"{name}.log").read_text().splitlines():
        parsed = json.loads(line)
        assert parsed.keys() >= BASE_FIELDS, line
        assert parsed["service"] == name, line
        lines.append(parsed)
    return lines


def feature(at: datetime) -> dict[str, Any]:
    return {
        "event_id": uuid.uuid4().hex,
        "type": "feature",
        "feature": "ai_effect.anime",
        "action": "applied",
        "timestamp": at.isoformat(),
    }


def read_topic(kafka: KafkaBroker, topic: str) -> list[tuple[dict[str, bytes], bytes]]:
    """The headers and value of every record on a topic."""
    consumer = KafkaConsumer(bootstrap_servers=kafka.bootstrap, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        ends = consumer.end_offsets(partitions)
        found = []
        while any(consumer.position(tp) < end for tp, end in ends.items()):
            for records in consumer.poll(timeout_ms=500).values():
                found += [(dict(record.headers), record.value) for record in records]
        return found
    finally:
        consumer.close()


def test_a_request_id_goes_from_the_http_request_to_the_worker_logs(
    pipeline: Pipeline, kafka: KafkaBroker
) -> None:
    pipeline.start("sink", "streams", "ingest")
    assert wait_for(lambda: "[^Worker]: Ready" in pipeline.log("streams"), timeout=90)
    request_id = f"req-{uuid.uuid4().hex[:12]}"
    now = datetime.now(UTC)
    auth = {"Authorization": f"Bearer {pipeline.write_key}"}
    with httpx.Client(base_url=pipeline.ingest_url, headers=auth, timeout=30) as client:
        # An event on time gives the partition a clock; idle, the clock then follows wall time.
        assert client.post("/v1/events", json=feature(now)).status_code == 202
        assert wait_for(lambda: "owns events partition" in pipeline.log("streams"), timeout=60)
        time.sleep(2)  # a few ticks of the worker: its watermark has moved up to that event
        # Ten minutes old: its window closed long ago, so the worker sends it as a late event.
        late = client.post(
            "/v1/events", json=feature(now - timedelta(minutes=10)), headers={"X-Request-ID": request_id}
        )
        refused = client.post("/v1/events", json=feature(now), headers={"Authorization": "Bearer cmk_nope"})
        unnamed = client.post("/v1/events", json=feature(now))

    assert late.status_code == 202 and late.headers["X-Request-ID"] == request_id
    assert refused.status_code == 401 and refused.headers["X-Request-ID"]  # refusals carry one too
    assert len(unnamed.headers["X-Request-ID"]) == 32  # made by the API when the client sends none

    assert [REQUEST_IDS_HEADER, request_id.encode()] in [
        list(item) for headers, _ in read_topic(kafka, pipeline.topics.events) for item in headers.items()
    ]

    def worker_lines() -> list[dict[str, Any]]:
        return [line for line in log_lines(pipeline, "streams") if request_id in line.get("request_ids", [])]

    sent_late = wait_for(worker_lines, timeout=30)
    assert sent_late, pipeline.log("streams")
    assert "came after their window closed: sent as late events" in sent_late[0]["message"]
    assert sent_late[0]["topic"] == pipeline.topics.events
    assert {"partition", "offset"} <= sent_late[0].keys()

    ingest = [line for line in log_lines(pipeline, "ingest") if line.get("request_id") == request_id]
    assert [(line["message"], line["status"], line["accepted"]) for line in ingest] == [
        ("POST /v1/events 202", 202, 1)
    ]
    assert any(line["logger"].startswith("uvicorn") for line in log_lines(pipeline, "ingest"))
    refusal = [line for line in log_lines(pipeline, "ingest") if line.get("status") == 401]
    assert refusal[0]["reason"] == "unknown write key"
    assert "cmk_nope" not in (pipeline.logs / "ingest.log").read_text()

    # The sink stored the id with the event, and names the requests of a record it cannot read.
    def stored() -> dict[object, object]:
        return dict(pipeline.query("SELECT request_id, count() FROM metrics.events GROUP BY request_id"))

    assert wait_for(lambda: stored().get(request_id) == 1, timeout=30), stored()
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap)
    producer.send(
        pipeline.topics.aggregates, b"{not json", headers=[request_ids_header([request_id, "other-request"])]
    ).get(timeout=30)
    producer.close()

    def sink_lines() -> list[dict[str, Any]]:
        return [line for line in log_lines(pipeline, "sink") if request_id in line.get("request_ids", [])]

    undecodable = wait_for(sink_lines, timeout=30)
    assert undecodable, pipeline.log("sink")
    assert undecodable[0]["request_ids"] == [request_id, "other-request"]
    assert undecodable[0]["topic"] == pipeline.topics.aggregates
    assert undecodable[0]["level"] == "ERROR" and "JSONDecodeError" in undecodable[0]["exception"]


def test_the_worker_dead_letters_an_envelope_it_cannot_read_naming_its_requests(
    pipeline: Pipeline, kafka: KafkaBroker
) -> None:
    pipeline.start("streams")
    assert wait_for(lambda: "[^Worker]: Ready" in pipeline.log("streams"), timeout=90)
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap)
    producer.send(
        pipeline.topics.events,
        b"\x00not an envelope",
        key=b"cosnap-test",
        headers=[request_ids_header(["r-1"])],
    ).get(timeout=30)
    producer.close()

    def failed() -> list[dict[str, Any]]:
        return [line for line in log_lines(pipeline, "streams") if line.get("request_ids") == ["r-1"]]

    lines = wait_for(failed, timeout=60)
    assert lines, pipeline.log("streams")
    assert lines[0]["message"].startswith(f"folding the envelope {pipeline.topics.events}[")
    assert lines[0]["level"] == "ERROR" and "msgspec.DecodeError" in lines[0]["exception"]
    assert (lines[0]["topic"], lines[0]["offset"]) == (pipeline.topics.events, 0)

    # The record is set aside on the dead-letter topic, and the partition goes on.
    def dead_letters() -> list[dict[str, Any]]:
        return [json.loads(value) for _, value in read_topic(kafka, pipeline.topics.dead_letter)]

    [dead_letter] = wait_for(dead_letters, timeout=30)
    assert dead_letter["request_id"] == f"{pipeline.topics.events}:{lines[0]['partition']}:0"
    assert dead_letter["reason"].startswith("streams worker could not read the envelope")
    assert dead_letter["raw"] == "\x00not an envelope"
    readable = {"v": 1, "project": "cosnap-test", "events": [feature(datetime.now(UTC))]}
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap)
    producer.send(pipeline.topics.events, json.dumps(readable).encode(), key=b"cosnap-test").get(timeout=30)
    producer.close()

    def folded() -> float:
        metrics = httpx.get(f"{pipeline.status_urls['streams']}/metrics", timeout=10).text
        counted = re.findall(r"^cosnap_streams_events_folded_total\{[^}]*\} (\S+)$", metrics, re.MULTILINE)
        return sum(map(float, counted))

    assert wait_for(lambda: folded() == 1, timeout=30), pipeline.log("streams")
