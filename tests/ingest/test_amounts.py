"""Amounts and values over HTTP: what the store cannot hold is refused item by item with a reason
(never a 500, whatever the exponent), and accepted amounts reach Kafka normalised."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from kafka import KafkaConsumer

from cosnap_metrics.broker import KafkaBroker
from tests.conftest import Pipeline, make_pipeline

pytestmark = [pytest.mark.kafka]

GOOD = {"type": "feature", "feature": "ai_effect.anime", "action": "applied", "user_id": "u1"}
REVENUE = {"type": "revenue", "name": "subscription.renewal", "currency": "USD"}
PERFORMANCE = {"type": "performance", "metric": "api.latency", "unit": "ms"}


@pytest.fixture(scope="module")
def ingest(kafka: KafkaBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    running = make_pipeline(kafka, tmp_path_factory.mktemp("amounts"))
    running.start("ingest")
    yield running
    running.close()


def post(p: Pipeline, body: bytes) -> httpx.Response:
    response = httpx.post(
        f"{p.ingest_url}/v1/events",
        content=body,
        headers={"Authorization": f"Bearer {p.write_key}", "Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code < 500, response.text
    return response


def between_neighbours(item: bytes) -> bytes:
    good = json.dumps(GOOD).encode()
    return b'{"events": [' + good + b"," + item + b"," + good + b"]}"


def revenue(amount: str) -> bytes:
    """A revenue item whose amount is the JSON text `amount` (a number, or a "string")."""
    return json.dumps(REVENUE | {"amount": "AMOUNT"}).encode().replace(b'"AMOUNT"', amount.encode())


def performance(value: str) -> bytes:
    return json.dumps(PERFORMANCE | {"value": "VALUE"}).encode().replace(b'"VALUE"', value.encode())


ASCII = "must be a decimal number written with ASCII digits"
REFUSED: dict[str, tuple[bytes, str]] = {
    "zero-huge-exponent": (revenue('"0E+100000000"'), "amount has an exponent out of range"),
    "1E+40": (revenue('"1E+40"'), "amount has more than 29 digits before the decimal point"),
    "1e999999999": (revenue('"1e999999999"'), "amount has an exponent out of range"),
    "-1e999999999": (revenue('"-1e999999999"'), "amount has an exponent out of range"),
    "exponent-beyond-decimal": (
        revenue('"1e9999999999999999999"'),
        "amount: input should be a valid decimal",
    ),
    "1e12": (revenue('"1e12"'), "amount must be within ±1000000000"),
    "ten-decimals": (revenue('"1.0000000001"'), "amount has more than 9 decimal places"),
    "json-number-1e300": (revenue("1e300"), "amount has an exponent out of range"),
    "json-number-tiny": (revenue("1e-300"), "amount has an exponent out of range"),
    "json-integer-huge": (revenue("1" + "0" * 30), "amount has more than 29 digits"),
    "arabic-indic-digits": (
        revenue('"\\u0661"'),
        "amount must be a decimal number written with ASCII digits",
    ),
    "underscores": (revenue('"1_000"'), f"amount {ASCII}"),
    "amount-nan": (revenue('"NaN"'), "amount must be a finite number"),
    "value-1e999999999": (performance('"1e999999999"'), "value: input should be a finite number"),
    "value--1e999999999": (performance('"-1e999999999"'), "value: input should be a finite number"),
    "value-1e16": (performance("1e16"), "value: input should be less than or equal to"),
    "value-true": (performance("true"), "value must be a number, not a boolean"),
    "value-spaces": (performance('" 12"'), f"value {ASCII}"),
    "value-long-text": (performance('"' + "1" * 100 + '"'), "value is longer than 64 characters"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_out_of_store_numbers_are_refused_item_by_item(ingest: Pipeline, case: str) -> None:
    item, reason = REFUSED[case]
    response = post(ingest, between_neighbours(item))
    assert response.status_code == 202
    body = response.json()
    assert body["accepted"] == 2
    assert [r["index"] for r in body["rejected"]] == [1]
    assert reason.lower() in body["rejected"][0]["reason"].lower(), body

    alone = post(ingest, item)
    assert alone.status_code == 400
    assert alone.json()["rejected"][0]["index"] == 0


def test_accepted_amounts_reach_kafka_normalised(ingest: Pipeline, kafka: KafkaBroker) -> None:
    sent = {
        "z30": '"0E+30"',
        "trail": '"9.990"',
        "exp": '"1.5E+3"',
        "num": "0.1",
        "neg0": '"-0"',
        "int": "42",
    }
    items = [
        revenue(amount).replace(b"{", b'{"event_id": "' + name.encode() + b'", ', 1)
        for name, amount in sent.items()
    ]
    response = post(ingest, b'{"events": [' + b",".join(items) + b"]}")
    assert response.status_code == 202
    assert response.json() == {"accepted": len(sent), "rejected": []}

    consumer = KafkaConsumer(
        ingest.topics.events,
        bootstrap_servers=kafka.bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=1000,
    )
    amounts: dict[str, Any] = {}
    deadline = time.monotonic() + 15
    try:
        while not set(sent) <= set(amounts) and time.monotonic() < deadline:
            for message in consumer:
                for event in orjson.loads(message.value)["events"]:
                    amounts[event["event_id"]] = event.get("amount")
    finally:
        consumer.close()
    assert {name: amounts.get(name) for name in sent} == {
        "z30": "0",
        "trail": "9.99",
        "exp": "1500",
        "num": "0.1",
        "neg0": "0",
        "int": "42",
    }
