"""The bad-input suite: every case gets its documented 4xx, never a 5xx, and valid neighbours in
the same batch are still accepted. Ends with schemathesis against the OpenAPI document."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.ingest.fakes import ServedIngest

GOOD = {"type": "feature", "feature": "ai_effect.anime", "action": "applied", "user_id": "u1"}
REVENUE = {"type": "revenue", "name": "subscription.renewal", "amount": "9.99", "currency": "USD"}
NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
def ingest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedIngest]:
    """One ingest app, with a fake producer, for the whole suite (the cases are independent
    requests, and none depends on what Kafka holds)."""
    running = ServedIngest(tmp_path_factory.mktemp("bad-input") / "data")
    running.start()
    yield running
    running.stop()


def send(p: ServedIngest, body: bytes, **headers: str) -> httpx.Response:
    base = {"Authorization": f"Bearer {p.write_key}", "Content-Type": "application/json"}
    response = httpx.post(f"{p.ingest_url}/v1/events", content=body, headers=base | headers, timeout=30)
    assert response.status_code < 500, response.text
    return response


def between_neighbours(bad_item: bytes) -> bytes:
    good = json.dumps(GOOD).encode()
    return b'{"events": [' + good + b", " + bad_item + b", " + good + b"]}"


ITEM_CASES: dict[str, tuple[bytes, str]] = {
    "wrong-type-amount": (json.dumps(REVENUE | {"amount": True}).encode(), "amount"),
    "wrong-type-value": (b'{"type": "performance", "metric": "m", "value": "fast", "unit": "ms"}', "value"),
    "missing-field": (json.dumps({k: v for k, v in REVENUE.items() if k != "currency"}).encode(), "currency"),
    "nan-literal": (b'{"type": "performance", "metric": "m", "value": NaN, "unit": "ms"}', "not valid JSON"),
    "infinity-string": (
        b'{"type": "performance", "metric": "m", "value": "Infinity", "unit": "ms"}',
        "value",
    ),
    "5000-digit-integer": (
        b'{"type": "performance", "metric": "m", "unit": "ms", "value": ' + b"7" * 5000 + b"}",
        "JSON",
    ),
    "lone-surrogate": (
        b'{"type": "feature", "feature": "f", "action": "a", "user_id": "\\udc00"}',
        "surrogate",
    ),
    "nested-10000-deep": (
        b'{"type": "feature", "feature": "f", "action": "a", "tags": ' + b"[" * 10000 + b"]" * 10000 + b"}",
        "not valid JSON",
    ),
    "unknown-type": (b'{"type": "pageview", "url": "/"}', "type"),
    "absurd-amount": (json.dumps(REVENUE | {"amount": "1e15"}).encode(), "amount"),
    "negative-absurd-amount": (json.dumps(REVENUE | {"amount": "-999999999999"}).encode(), "amount"),
    "far-future": (
        json.dumps(GOOD | {"timestamp": (NOW + timedelta(days=3)).isoformat()}).encode(),
        "future",
    ),
    "far-past": (
        json.dumps(GOOD | {"timestamp": (NOW - timedelta(days=400)).isoformat()}).encode(),
        "too old",
    ),
    "invalid-currency": (json.dumps(REVENUE | {"currency": "DOGE"}).encode(), "ISO 4217"),
    "too-many-tags": (json.dumps(GOOD | {"tags": {f"t{i}": "v" for i in range(40)}}).encode(), "tags"),
    "not-an-object": (b"42", "object"),
}


@pytest.mark.parametrize("case", list(ITEM_CASES))
def test_bad_item_is_rejected_and_neighbours_accepted(ingest: ServedIngest, case: str) -> None:
    item, reason = ITEM_CASES[case]
    response = send(ingest, between_neighbours(item))
    assert response.status_code == 202
    body = response.json()
    assert body["accepted"] == 2
    assert [r["index"] for r in body["rejected"]] == [1]
    assert reason.lower() in body["rejected"][0]["reason"].lower()


def test_duplicate_event_id_is_rejected_once(ingest: ServedIngest) -> None:
    body = json.dumps({"events": [GOOD | {"event_id": "dup"}, GOOD | {"event_id": "dup"}, GOOD]}).encode()
    response = send(ingest, body)
    assert response.status_code == 202
    assert response.json()["accepted"] == 2
    assert "duplicate" in response.json()["rejected"][0]["reason"]


BODY_CASES: dict[str, tuple[bytes, dict[str, str], int]] = {
    "malformed-json": (b'{"events": [{"type": "feature"', {}, 400),
    "1001-events": (json.dumps({"events": [GOOD] * 1001}).encode(), {}, 413),
    "wrong-key": (json.dumps(GOOD).encode(), {"Authorization": "Bearer cmk_not-a-real-key"}, 401),
    "missing-key": (json.dumps(GOOD).encode(), {"Authorization": ""}, 401),
    "non-bearer-scheme": (json.dumps(GOOD).encode(), {"Authorization": "Token abc"}, 401),
    "wrong-content-type": (json.dumps(GOOD).encode(), {"Content-Type": "application/xml"}, 415),
    "text-plain-without-api-key": (json.dumps(GOOD).encode(), {"Content-Type": "text/plain"}, 415),
    "single-bad-event": (json.dumps(REVENUE | {"currency": "DOGE"}).encode(), {}, 400),
}


@pytest.mark.parametrize("case", list(BODY_CASES))
def test_bad_body_gets_its_documented_status(ingest: ServedIngest, case: str) -> None:
    body, headers, status = BODY_CASES[case]
    response = send(ingest, body, **headers)
    assert response.status_code == status
    assert response.json().get("detail") or response.json().get("rejected")


def test_chunked_body_over_the_cap_without_content_length(ingest: ServedIngest) -> None:
    def endless() -> Iterator[bytes]:
        yield b'{"events": ['
        for _ in range(200):
            yield json.dumps(GOOD).encode() * 100 + b","

    response = httpx.post(
        f"{ingest.ingest_url}/v1/events",
        content=endless(),
        headers={"Authorization": f"Bearer {ingest.write_key}", "Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 413


def test_openapi_fuzz_never_5xx_and_matches_the_schema(ingest: ServedIngest) -> None:
    """Schemathesis generates bodies and headers from the OpenAPI document (the pytest plugin of
    schemathesis 4.32 does not run under pytest 9, so hypothesis drives its strategy directly)."""
    operations = schemathesis.openapi.from_url(f"{ingest.ingest_url}/openapi.json")
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    tried = 0
    for path, method in [("/v1/events", "POST"), ("/health", "GET"), ("/health/ready", "GET")]:
        operation = operations[path][method]

        @hypothesis.given(case=operation.as_strategy())
        @hypothesis.settings(
            max_examples=int(os.environ.get("COSNAP_FUZZ_EXAMPLES", "150")) if method == "POST" else 10,
            deadline=None,
            database=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        def call(case: Any) -> None:
            nonlocal tried
            tried += 1
            case.call_and_validate(
                base_url=ingest.ingest_url,
                headers={"Authorization": f"Bearer {ingest.write_key}"},
                checks=checks,
            )

        call()
    assert tried >= 150
