"""Envelopes keyed by series (`COSNAP_EVENTS_KEY=series`): one envelope per key of a request, a
202 only once every one is acknowledged, a 503 when one is not (its retry is sent under the same
keys), and on a real broker one project's series on several partitions, every copy of an event on
the partition of its first."""

from __future__ import annotations

import uuid
from collections import defaultdict
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka import KafkaConsumer, TopicPartition

from cosnap_metrics.broker import KafkaBroker
from schemas.settings import IngestSettings
from tests.conftest import Pipeline, wait_for
from tests.ingest.contract_strategies import examples
from tests.ingest.fakes import ServedIngest
from tests.ingest.test_api import post

METRICS = [f"m{n}.latency" for n in range(12)]


def mixed(n: int) -> list[dict[str, Any]]:
    """`n` events of one project over 12 metrics, 2 features, 2 funnels and 2 revenue names."""
    events: list[dict[str, Any]] = []
    for i in range(n):
        event_id = f"e{i}-{uuid.uuid4().hex[:6]}"
        match i % 4:
            case 0 | 1:
                event = {"type": "performance", "metric": METRICS[i % 12], "value": i, "unit": "ms"}
            case 2:
                event = {"type": "feature", "feature": f"f{i % 2}", "action": "used"}
            case _:
                if i % 8 == 3:
                    event = {"type": "conversion", "funnel": f"funnel{i % 16 // 8}", "step": f"s{i % 3}"}
                else:
                    name = f"r{i % 2}"
                    event = {"type": "revenue", "name": name, "amount": "1.5", "currency": "USD"}
        events.append(event | {"event_id": event_id, "user_id": f"u{i % 50}"})
    return events


def key_of(project: str, event: dict[str, Any]) -> bytes:
    name = {"performance": "metric", "feature": "feature", "conversion": "funnel", "revenue": "name"}
    return f"{project}|{event['type']}|{event[name[event['type']]]}".encode()


def test_a_request_is_one_envelope_per_series_key(served: ServedIngest) -> None:
    served.settings["events_key"] = "series"
    served.start()
    events = mixed(200)
    response = post(served, {"events": events})
    assert response.status_code == 202 and response.json()["accepted"] == 200
    envelopes = [r for r in served.producer.records if r.topic == served.topics.events]
    by_key: dict[bytes, list[str]] = defaultdict(list)
    for record in envelopes:
        assert record.key is not None
        assert by_key[record.key] == []  # one envelope per key: none was split
        by_key[record.key] = [e["event_id"] for e in orjson.loads(record.value)["events"]]
    expected: dict[bytes, list[str]] = defaultdict(list)
    for event in events:
        expected[key_of("cosnap-test", event)].append(event["event_id"])
    assert by_key == expected  # each event under its series' key, in the request's order


def test_one_key_refused_is_a_503_and_the_retry_goes_under_the_same_keys(served: ServedIngest) -> None:
    served.settings["events_key"] = "series"
    served.start()
    events = mixed(40)
    refused = key_of("cosnap-test", events[0])
    served.producer.refused_keys = {refused}
    response = post(served, {"events": events})
    assert response.status_code == 503 and response.headers["Retry-After"]
    first = [r for r in served.producer.records if r.topic == served.topics.events]
    assert first and all(r.key != refused for r in first)  # the other envelopes were acknowledged
    served.producer.refused_keys = set()
    response = post(served, {"events": events})
    assert response.status_code == 202 and response.json()["accepted"] == 40
    keys_of: dict[str, set[bytes]] = defaultdict(set)
    for record in served.producer.records:
        if record.topic == served.topics.events and record.key is not None:
            for event in orjson.loads(record.value)["events"]:
                keys_of[event["event_id"]].add(record.key)
    # Every copy of an event has its first copy's key, so its partition: the worker and the sink
    # count it once (tests/streams/test_spread.py proves that end to end).
    assert {event_id: len(keys) for event_id, keys in keys_of.items()} == {e["event_id"]: 1 for e in events}


@settings(
    max_examples=examples(50), suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None
)
@given(st.lists(st.sampled_from(range(200)), min_size=1, max_size=60), st.randoms(use_true_random=False))
def test_any_retry_pattern_keeps_each_event_under_one_key(
    served_started: ServedIngest, picks: list[int], rng: Any
) -> None:
    pool = mixed(200)
    sent = [pool[i] for i in dict.fromkeys(picks)]
    rng.shuffle(sent)
    before = len(served_started.producer.records)
    for batch in (sent, sent[: len(sent) // 2], list(reversed(sent))):  # a retry, a partial one, reordered
        if batch:
            assert post(served_started, {"events": batch}).status_code == 202
    keys_of: dict[str, set[bytes]] = defaultdict(set)
    for record in served_started.producer.records[before:]:
        if record.key is not None:
            for event in orjson.loads(record.value)["events"]:
                keys_of[event["event_id"]].add(record.key)
    assert all(len(keys) == 1 for keys in keys_of.values())
    assert set(keys_of) == {e["event_id"] for e in sent}


@pytest.fixture
def served_started(served: ServedIngest) -> ServedIngest:
    served.settings |= {"events_key": "series", "rate_limit_events_per_s": 0}
    served.start()
    return served


@pytest.mark.kafka
def test_one_project_spreads_over_the_partitions_and_a_retry_lands_with_its_first_copy(
    pipeline: Pipeline, kafka: KafkaBroker
) -> None:
    pipeline.env["COSNAP_EVENTS_KEY"] = "series"
    pipeline.start("ingest")
    events = mixed(400)
    for _ in range(2):  # the same batches twice: every event and its retry
        for first in range(0, len(events), 100):
            response = post(pipeline, {"events": events[first : first + 100]})
            assert response.status_code == 202
    consumer = KafkaConsumer(bootstrap_servers=kafka.bootstrap, enable_auto_commit=False)
    try:
        topic = pipeline.topics.events
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        partitions_of: dict[str, list[int]] = defaultdict(list)

        def read_all() -> bool:
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    assert record.key.startswith(b"cosnap-test|")
                    for event in orjson.loads(record.value)["events"]:
                        partitions_of[event["event_id"]].append(record.partition)
            return sum(map(len, partitions_of.values())) == 2 * len(events)

        assert wait_for(read_all, timeout=60)
    finally:
        consumer.close()
    assert all(len(set(found)) == 1 for found in partitions_of.values())  # a copy with its first
    used = {found[0] for found in partitions_of.values()}
    assert len(used) >= 3, used  # one project, its series over (at least) 3 of the 6 partitions


def test_envelopes_keyed_by_series_linger_longer_by_default() -> None:
    """A request makes an envelope per key: keyed by series they wait 25 ms for the events of
    concurrent requests, keyed by project 5 ms (docs/reference.md); COSNAP_LINGER_MS sets both."""
    assert IngestSettings(events_key="project").envelope_linger_s == 0.005
    assert IngestSettings(events_key="series").envelope_linger_s == 0.025
    assert IngestSettings(events_key="series", linger_ms=0).envelope_linger_s == 0
    assert IngestSettings(events_key="project", linger_ms=40).envelope_linger_s == 0.04
