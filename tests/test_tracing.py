"""A trace crosses the pipeline: an ingest request Sentry traces (the client's `sentry-trace`
continued), the worker's fold of the record it wrote and the sink's insert of it are
transactions of one trace, sent by the real sentry-sdk of each service process over HTTP to a
Sentry endpoint of the test's own on 127.0.0.1 (real Kafka, chDB). Records of requests not
sampled carry no trace, and the worker and the sink send nothing for them."""

from __future__ import annotations

import gzip
import secrets
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import sentry_sdk
from sentry_sdk.envelope import Envelope

from tests.conftest import Pipeline, wait_for
from tests.sinks.notify.conftest import Receiver

pytestmark = [pytest.mark.kafka, pytest.mark.e2e]


def transactions(receiver: Receiver) -> list[dict[str, Any]]:
    """Every transaction the services sent to the receiver, with the service that sent it."""
    found = []
    for delivery in list(receiver.deliveries):
        body = delivery.body
        if delivery.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        envelope = Envelope.deserialize(body)
        transaction = envelope.get_transaction_event()
        if transaction is not None:
            found.append(dict(transaction))
    return found


def by_trace(receiver: Receiver, trace_id: str) -> dict[str, dict[str, Any]]:
    """The transactions of `trace_id`, by the service (tag) that sent them."""
    return {
        t["tags"]["service"]: t
        for t in transactions(receiver)
        if t["contexts"]["trace"]["trace_id"] == trace_id
    }


def post(pipeline: Pipeline, event_id: str, sampled: bool) -> tuple[str, str]:
    """Post one event as a client in trace `trace_id` whose span `span_id` decided `sampled`."""
    trace_id, span_id = uuid.uuid4().hex, secrets.token_hex(8)
    response = httpx.post(
        f"{pipeline.ingest_url}/v1/events",
        json={
            "event_id": event_id,
            "type": "feature",
            "feature": "share",
            "action": "clicked",
            "timestamp": datetime.now(UTC).isoformat(),
        },
        headers={
            "Authorization": f"Bearer {pipeline.write_key}",
            "sentry-trace": f"{trace_id}-{span_id}-{1 if sampled else 0}",
        },
        timeout=30,
    )
    assert response.status_code == 202, response.text
    return trace_id, span_id


@pytest.fixture
def no_sentry_in_this_process() -> Iterator[None]:
    """The test posts as a client of its own trace: a Sentry client that an earlier test of this
    process started would put its own trace on those requests (sentry-sdk's httpx integration
    overwrites `sentry-trace`), so none is bound while the test runs."""
    scope = sentry_sdk.get_global_scope()
    before = scope.client
    scope.set_client(None)
    yield
    scope.set_client(before)


@pytest.mark.usefixtures("no_sentry_in_this_process")
def test_an_ingest_requests_trace_reaches_the_workers_fold_and_the_sinks_insert(pipeline: Pipeline) -> None:
    sentry = Receiver()
    try:
        port = sentry.url.split(":")[2].split("/")[0]
        pipeline.env |= {
            "SENTRY_DSN": f"http://public@127.0.0.1:{port}/1",  # Sentry's own variable names
            "SENTRY_TRACES_SAMPLE_RATE": "1.0",
            "SENTRY_ENVIRONMENT": "test",
        }
        pipeline.start("sink", "streams", "ingest")
        unsampled, _ = post(pipeline, "untraced-1", sampled=False)
        # Three traced requests, one whole trace needed: under load sentry-sdk may drop a
        # transaction of a sampled trace (its backpressure monitor halves the sample rate, of
        # continued traces too, while a transport's queue is full; docs/findings.md).
        posted = dict(post(pipeline, f"traced-{n}", sampled=True) for n in range(3))

        def whole_trace() -> tuple[str, dict[str, dict[str, Any]]] | None:
            for trace_id in posted:
                found = by_trace(sentry, trace_id)
                if {"ingest", "streams", "sink"} <= set(found):
                    return trace_id, found
            return None

        whole = wait_for(whole_trace, 90, interval=1)
        assert whole is not None, [
            (t["tags"].get("service"), t["transaction"], t["contexts"]["trace"]["trace_id"])
            for t in transactions(sentry)
        ]
        trace_id, traced = whole
        client_span = posted[trace_id]
        ingest, streams, sink = traced["ingest"], traced["streams"], traced["sink"]
        assert (
            ingest["transaction"] == "/v1/events"
            and ingest["contexts"]["trace"]["parent_span_id"] == client_span
        )
        assert streams["contexts"]["trace"]["op"] == "streams.fold"
        assert sink["contexts"]["trace"]["op"] == "db.insert" and "events" in sink["transaction"]
        assert {t["environment"] for t in traced.values()} == {"test"}
        # The worker's and the sink's transactions start from spans of the ingest's trace.
        ingest_spans = {ingest["contexts"]["trace"]["span_id"]} | {
            s["span_id"] for s in ingest.get("spans", [])
        }
        assert streams["contexts"]["trace"]["parent_span_id"] in ingest_spans
        assert sink["contexts"]["trace"]["parent_span_id"] in ingest_spans

        # The event of the unsampled request landed, and no service sent a transaction for it.
        assert wait_for(
            lambda: (
                pipeline.query("SELECT count() FROM metrics.events WHERE event_id = 'untraced-1'") == [[1]]
            ),
            60,
        )
        assert by_trace(sentry, unsampled) == {}
    finally:
        pipeline.stop()
        sentry.close()
