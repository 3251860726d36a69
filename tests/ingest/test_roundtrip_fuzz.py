"""Accepted events come out of ClickHouse with exactly the values sent: a sample of generated
valid events (contract_strategies.valid_events, from the JSON Schema) posted to the real ingest,
through Kafka and the sink into chDB, and read back field by field.

"Exactly" is the contract's: text NFC-normalised, amounts as exact decimals (normalised: 9.990
is 9.99), timestamps in UTC at millisecond precision (cut, not rounded), absent strings ''.
"""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cosnap_metrics.broker import KafkaBroker
from tests.conftest import Pipeline, make_pipeline
from tests.ingest.contract_strategies import encode, examples, fuzz_settings, valid_events

pytestmark = [pytest.mark.kafka, pytest.mark.e2e]

TEXT_FIELDS = ["user_id", "anonymous_id", "session_id", "environment", "release"]
PLAIN_FIELDS = ["type", "name", "currency", "funnel", "step", "feature", "action", "metric", "unit", "source"]
COLUMNS = [
    "event_id", *PLAIN_FIELDS, *TEXT_FIELDS, "toString(amount)", "toString(step_index)", "toString(value)",
    "tags", "toString(timestamp)", "toString(received_at)",
]  # fmt: skip


@pytest.fixture(scope="module")
def running(kafka: KafkaBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    pipeline = make_pipeline(kafka, tmp_path_factory.mktemp("roundtrip"))
    pipeline.env |= {"COSNAP_RATE_LIMIT_EVENTS_PER_S": "0"}
    pipeline.start("sink", "ingest")
    yield pipeline
    pipeline.close()


def nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def stored_ms(sent: str) -> str:
    """A sent RFC 3339 timestamp as the events table keeps it: UTC, milliseconds cut."""
    ts = datetime.fromisoformat(sent.replace("Z", "+00:00")).astimezone(UTC)
    return ts.strftime("%Y-%m-%d %H:%M:%S.") + f"{ts.microsecond // 1000:03d}"


def test_accepted_events_come_out_of_clickhouse_as_sent(running: Pipeline) -> None:
    sent: dict[str, tuple[dict[str, Any], str, str]] = {}  # event_id -> event, posted from, to

    @fuzz_settings(40)
    @given(batch=st.lists(valid_events(), min_size=1, max_size=25))
    def post(batch: list[dict[str, Any]]) -> None:
        before = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        response = httpx.post(
            f"{running.ingest_url}/v1/events",
            content=encode({"events": batch}, ascii_only=False),
            headers={"Authorization": f"Bearer {running.write_key}", "Content-Type": "application/json"},
            timeout=30,
        )
        assert response.status_code == 202, response.text
        assert response.json() == {"accepted": len(batch), "rejected": []}, batch
        after = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        for event in batch:
            sent[event["event_id"]] = (event, before, after)

    post()
    assert len(sent) >= examples(40)

    def stored() -> list[list[Any]]:
        return running.query(f"SELECT {', '.join(COLUMNS)} FROM metrics.events FINAL")  # noqa: S608

    deadline = time.monotonic() + 60
    while len(rows := stored()) < len(sent):
        assert time.monotonic() < deadline, (len(rows), len(sent), running.log("sink"))
        time.sleep(0.5)
    assert len(rows) == len(sent)
    for row in rows:
        got = dict(zip([c.removeprefix("toString(").rstrip(")") for c in COLUMNS], row, strict=True))
        event, before, after = sent[got["event_id"]]
        for name in PLAIN_FIELDS:
            assert got[name] == event.get(name, ""), (name, got, event)
        for name in TEXT_FIELDS:
            assert got[name] == nfc(event.get(name, "")), (name, got, event)
        assert got["tags"] == {k: nfc(v) for k, v in event.get("tags", {}).items()}, (got, event)
        if event["type"] == "revenue":
            amount = event["amount"]
            assert Decimal(got["amount"]) == Decimal(repr(amount) if isinstance(amount, float) else amount)
        else:
            assert got["amount"] is None, got
        assert got["step_index"] == (str(event["step_index"]) if "step_index" in event else None), got
        if event["type"] == "performance":
            assert float(got["value"]) == float(event["value"]), (got, event)
        if "timestamp" in event:
            assert got["timestamp"] == stored_ms(event["timestamp"]), (got, event)
        else:
            assert got["timestamp"] == got["received_at"], got
        assert before <= got["received_at"] <= after, (before, got, after)
