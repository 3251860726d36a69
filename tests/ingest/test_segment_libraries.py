"""Segment's own libraries pointed at the ingest, as an app instrumented with Segment would be:
`segment-analytics-python` and `@segment/analytics-node` (tests/ingest/segment_node, installed by
`make segment-node`) each send 1,000 messages (revenue orders, checkout steps, pages, screens,
performance values, feature tracks, identify, group and alias calls) through the real pipeline
(Kafka, the sink, chDB). Every message is in `metrics.events` (or `metrics.traits`) once, each
amount exactly as sent; the same messages sent again add nothing."""

from __future__ import annotations

import json
import random
import subprocess
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from segment.analytics import Client

from cosnap_metrics.broker import KafkaBroker
from tests.conftest import Pipeline, make_pipeline, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
NODE_SENDER = ROOT / "tests" / "ingest" / "segment_node" / "send.mjs"
MESSAGES = 1000
TRAIT_CALLS = 30  # the first 30 messages: identify, group and alias in turn
FEATURES = ["Filter Applied", "Photo Shared", "Style Selected"]


@pytest.fixture(scope="module")
def segment_pipeline(kafka: KafkaBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    running = make_pipeline(kafka, tmp_path_factory.mktemp("segment"))
    running.start("sink", "ingest")
    yield running
    running.close()


def plan(prefix: str, seed: int) -> list[tuple[str, dict[str, Any]]]:
    """The calls an app makes, as (method, keyword arguments in the Python library's names)."""
    rng = random.Random(seed)
    calls: list[tuple[str, dict[str, Any]]] = []
    for i in range(MESSAGES):
        user = {"user_id": f"user-{i % 37}", "message_id": f"{prefix}-{i:04d}"}
        if i < TRAIT_CALLS:
            if i % 3 == 0:
                calls.append(("identify", user | {"traits": {"plan": "pro", "credits": 12.5}}))
            elif i % 3 == 1:
                calls.append(("group", user | {"group_id": f"team-{i}", "traits": {"seats": 5}}))
            else:
                calls.append(("alias", user | {"previous_id": f"anon-{i}"}))
            continue
        kind = i % 10
        if kind in (0, 1):
            # JSON numbers with cents, and every tenth order a string with nine decimals (the
            # Python library turns a Decimal into a float: only a string keeps 18 digits).
            revenue: Any = round(rng.uniform(0.5, 500), 2)
            if i % 100 == 0:
                revenue = f"{rng.randrange(10**8)}.{rng.randrange(10**9):09d}"
            properties = {"order_id": f"o-{i}", "revenue": revenue, "currency": rng.choice(["USD", "eur"])}
            calls.append(("track", user | {"event": "Order Completed", "properties": properties}))
        elif kind == 2:
            calls.append(("track", user | {"event": "Checkout Started", "properties": {"value": 10}}))
        elif kind == 3:
            calls.append(("track", user | {"event": "Payment Info Entered", "properties": {}}))
        elif kind == 4:
            calls.append(("page", user | {"name": "Pricing", "properties": {"path": "/pricing"}}))
        elif kind == 5:
            calls.append(("screen", user | {"name": "Editor"}))
        elif kind == 6:
            duration = round(rng.uniform(100, 9000), 1)
            calls.append(
                ("track", user | {"event": "Generation Completed", "properties": {"duration_ms": duration}})
            )
        else:
            calls.append(("track", user | {"event": rng.choice(FEATURES), "properties": {"plan": "free"}}))
    return calls


def expected_amounts(calls: list[tuple[str, dict[str, Any]]]) -> dict[str, Decimal]:
    """Each order's amount as the decimal its JSON text spells (a float's shortest repr, which
    is also what JavaScript writes), or its string."""
    amounts = {}
    for method, params in calls:
        revenue = params.get("properties", {}).get("revenue")
        if method == "track" and revenue is not None:
            amounts[params["message_id"]] = Decimal(revenue if isinstance(revenue, str) else repr(revenue))
    return amounts


def send_with_python(p: Pipeline, calls: list[tuple[str, dict[str, Any]]]) -> None:
    errors: list[Any] = []
    client = Client(
        p.write_key,
        host=p.ingest_url,
        gzip=True,
        upload_interval=0.2,
        max_retries=5,
        on_error=lambda error, batch: errors.append((error, len(batch))),
    )
    for method, params in calls:
        getattr(client, method)(**params)
    client.flush()
    client.join()
    assert errors == []


_NODE_NAMES = {
    "user_id": "userId",
    "message_id": "messageId",
    "group_id": "groupId",
    "previous_id": "previousId",
}


def send_with_node(p: Pipeline, calls: list[tuple[str, dict[str, Any]]], workdir: Path) -> None:
    node_calls = [
        {"call": method, "params": {_NODE_NAMES.get(key, key): value for key, value in params.items()}}
        for method, params in calls
    ]
    file = workdir / "calls.json"
    file.write_text(json.dumps(node_calls))
    run = subprocess.run(
        ["node", str(NODE_SENDER), p.ingest_url, p.write_key, str(file)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, f"{run.stderr}\n(is tests/ingest/segment_node installed? make segment-node)"
    answer = json.loads(run.stdout)
    assert answer == {"delivered": len(calls), "failed": []}


def stored(p: Pipeline, prefix: str) -> tuple[dict[str, tuple[str, str, str]], int]:
    """The events of `prefix` in metrics.events (first copies: FINAL), as id -> (type, amount,
    currency), and how many identify, group and alias calls are in metrics.traits."""
    rows = p.query(
        "SELECT event_id, type, toString(amount), currency FROM metrics.events FINAL "  # noqa: S608
        f"WHERE project = 'cosnap-test' AND startsWith(event_id, '{prefix}-')"
    )
    traits = p.query(
        f"SELECT count() FROM metrics.traits FINAL WHERE startsWith(message_id, '{prefix}-')"  # noqa: S608
    )
    events = {str(r[0]): (str(r[1]), str(r[2]), str(r[3])) for r in rows}
    return events, int(str(traits[0][0]))


def accepted_total(p: Pipeline) -> float:
    metrics = httpx.get(f"{p.ingest_url}/metrics", timeout=30).text
    line = next(
        line for line in metrics.splitlines() if line.startswith("cosnap_ingest_events_accepted_total ")
    )
    return float(line.split()[1])


def check_every_message_once(p: Pipeline, prefix: str, calls: list[tuple[str, dict[str, Any]]]) -> None:
    event_calls = MESSAGES - TRAIT_CALLS

    def landed() -> bool:
        events, traits = stored(p, prefix)
        return len(events) >= event_calls and traits >= TRAIT_CALLS

    assert wait_for(landed, timeout=180, interval=1), stored(p, prefix)
    events, traits = stored(p, prefix)
    assert traits == TRAIT_CALLS
    sent_ids = {
        params["message_id"] for method, params in calls if method not in ("identify", "group", "alias")
    }
    assert set(events) == sent_ids
    amounts = expected_amounts(calls)
    assert {event_id for event_id, (kind, _, _) in events.items() if kind == "revenue"} == set(amounts)
    for event_id, amount in amounts.items():
        kind, stored_amount, currency = events[event_id]
        assert Decimal(stored_amount) == amount, (event_id, stored_amount, amount)
        assert currency in ("USD", "EUR")
    total = p.query(
        "SELECT toString(sum(amount)) FROM metrics.events FINAL "  # noqa: S608
        f"WHERE project = 'cosnap-test' AND type = 'revenue' AND startsWith(event_id, '{prefix}-')"
    )
    assert Decimal(str(total[0][0])) == sum(amounts.values())
    kinds = sorted({kind for kind, _, _ in events.values()})
    assert kinds == ["conversion", "feature", "performance", "revenue"]


def check_a_retry_adds_nothing(
    p: Pipeline, prefix: str, send: Any, calls: list[tuple[str, dict[str, Any]]]
) -> None:
    """The same messages sent again are accepted (the ingest counts them again) and stored once."""
    before = stored(p, prefix)
    accepted = accepted_total(p)
    send(calls)
    assert accepted_total(p) - accepted == MESSAGES - TRAIT_CALLS
    # A marker sent once every copy was acknowledged lands after them on the same partition (the
    # key is the project): once it is stored, so are they.
    send([("track", {"user_id": "user-0", "message_id": f"{prefix}-marker", "event": "Retry Checked"})])
    assert wait_for(lambda: f"{prefix}-marker" in stored(p, prefix)[0], timeout=180, interval=1)
    events, traits = stored(p, prefix)
    del events[f"{prefix}-marker"]
    assert (events, traits) == before


def test_segment_analytics_python(segment_pipeline: Pipeline) -> None:
    calls = plan("py", seed=1)
    send_with_python(segment_pipeline, calls)
    check_every_message_once(segment_pipeline, "py", calls)
    check_a_retry_adds_nothing(
        segment_pipeline, "py", lambda again: send_with_python(segment_pipeline, again), calls
    )


def test_segment_analytics_node(segment_pipeline: Pipeline, tmp_path: Path) -> None:
    calls = plan("node", seed=2)
    send_with_node(segment_pipeline, calls, tmp_path)
    check_every_message_once(segment_pipeline, "node", calls)
    check_a_retry_adds_nothing(
        segment_pipeline, "node", lambda again: send_with_node(segment_pipeline, again, tmp_path), calls
    )
