"""HTTP behaviours of the ingest API: CORS, rate limits, the streaming body cap and the 503 of a
refused write with a fake producer; shared envelopes and 503 while Kafka is down on a real broker."""

from __future__ import annotations

import concurrent.futures
import json
import socket
import time
from urllib.parse import urlparse

import httpx
import pytest

from cosnap_metrics.broker import KafkaBroker
from plumbing.keys import KeyStore
from tests.conftest import Pipeline
from tests.ingest.fakes import ServedIngest
from tests.ingest.test_api import REVENUE, post, records


def test_cors_is_per_project_origin_and_never_a_wildcard(served: ServedIngest) -> None:
    pipeline = served
    key = KeyStore(pipeline.data_dir / "write-keys.json").create("web", ("https://*.cosnap.ai",))
    pipeline.start()
    url = f"{pipeline.ingest_url}/v1/events"
    preflight = httpx.options(
        url,
        headers={
            "Origin": "https://app.cosnap.ai",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "https://app.cosnap.ai"
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in preflight.headers
    assert httpx.options(url, headers={"Origin": "https://evil.example"}).status_code == 403

    ok = httpx.post(
        url, json=REVENUE, headers={"Authorization": f"Bearer {key}", "Origin": "https://app.cosnap.ai"}
    )
    assert ok.status_code == 202
    assert ok.headers["access-control-allow-origin"] == "https://app.cosnap.ai"
    other = httpx.post(
        url,
        json=REVENUE,
        headers={"Authorization": f"Bearer {pipeline.write_key}", "Origin": "https://app.cosnap.ai"},
    )
    assert other.status_code == 403  # the test project does not list that origin
    assert "not allowed" in other.json()["detail"]


def test_a_read_key_posts_nothing(served: ServedIngest) -> None:
    read_key = KeyStore(served.data_dir / "write-keys.json").create("cosnap-test", read=True)
    served.start()
    refused = httpx.post(
        f"{served.ingest_url}/v1/events", json=REVENUE, headers={"Authorization": f"Bearer {read_key}"}
    )
    assert refused.status_code == 401
    assert served.producer.records == []


def test_rate_limit_answers_429_with_retry_after(served: ServedIngest) -> None:
    pipeline = served
    pipeline.settings |= {"rate_limit_events_per_s": 10, "rate_limit_burst": 20}
    pipeline.start()
    batch = {"events": [REVENUE] * 15}
    assert post(pipeline, batch).status_code == 202
    limited = post(pipeline, batch)
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) >= 1
    time.sleep(int(limited.headers["retry-after"]))
    assert post(pipeline, batch).status_code == 202


@pytest.mark.kafka
def test_concurrent_single_events_share_envelopes(pipeline: Pipeline, kafka: KafkaBroker) -> None:
    pipeline.env |= {"COSNAP_LINGER_MS": "20"}
    pipeline.start("ingest")
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        statuses = list(pool.map(lambda _: post(pipeline, REVENUE).status_code, range(200)))
    assert statuses == [202] * 200
    envelopes = records(kafka, pipeline.topics.events, 1, timeout_s=5)
    assert sum(len(e["events"]) for e in envelopes) == 200
    assert len(envelopes) < 100  # single-event requests became multi-event records


@pytest.mark.kafka
def test_an_idle_connection_stays_open_longer_than_clients_pools_keep_theirs(pipeline: Pipeline) -> None:
    """uvicorn closes a connection idle for 5 s by default, while clients' pools keep theirs
    longer (Go's for 90 s): a POST written as the server closes the connection gets no answer
    (bench.pipeline's load generator saw ~2 a minute at 15,000 events/s). The ingest keeps idle
    connections for COSNAP_INGEST_KEEP_ALIVE_S, 75 s: the second request of a connection left
    idle for 6 s is answered on it."""
    pipeline.start("ingest")
    where = urlparse(pipeline.ingest_url)
    body = json.dumps(REVENUE).encode()
    request = (
        f"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {pipeline.write_key}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with socket.create_connection((where.hostname, where.port), timeout=10) as sock:
        for pause in (0, 6):
            time.sleep(pause)
            sock.sendall(request)
            answer = one_response(sock)
            assert answer.startswith(b"HTTP/1.1 202"), answer


def one_response(sock: socket.socket) -> bytes:
    """One whole HTTP/1.1 response read from `sock` (its head and Content-Length bytes of body;
    the two may arrive in separate segments)."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        part = sock.recv(65536)
        assert part, f"the connection closed after {answer!r}"
        answer += part
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = next(int(n.split(b":", 1)[1]) for n in lines if n.lower().startswith(b"content-length:"))
    while len(body) < length:
        part = sock.recv(65536)
        assert part, f"the connection closed after {answer!r}"
        body += part
    return head + b"\r\n\r\n" + body


def test_body_cap_is_enforced_while_streaming(served: ServedIngest) -> None:
    """A chunked body without Content-Length gets its 413 before the client finished sending."""
    pipeline = served
    pipeline.start()
    where = urlparse(pipeline.ingest_url)
    with socket.create_connection((where.hostname, where.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {pipeline.write_key}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        chunk = b"x" * 65536
        for _ in range(17):  # 1.06 MiB: just over the cap, out of a body that would go on forever
            sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        answer = b""
        while not answer.endswith(b"}") and (part := sock.recv(4096)):
            answer += part
    assert answer.startswith(b"HTTP/1.1 413")
    assert b"body over" in answer


def test_503_with_retry_after_while_the_producer_refuses_and_202_again_after(
    served: ServedIngest,
) -> None:
    served.start()
    assert post(served, REVENUE).status_code == 202
    served.producer.failing = True
    down = post(served, REVENUE)
    assert down.status_code == 503
    assert down.headers["retry-after"] == "5"
    assert "Kafka did not acknowledge" in down.json()["detail"]
    assert down.headers["x-request-id"]
    assert httpx.get(f"{served.ingest_url}/health/ready", timeout=10).status_code == 503
    served.producer.failing = False
    assert post(served, REVENUE).status_code == 202
    assert httpx.get(f"{served.ingest_url}/health/ready", timeout=10).status_code == 200
    assert len([r for r in served.producer.records if r.topic == served.topics.events]) == 2


@pytest.mark.kafka
def test_503_while_kafka_is_down_and_202_again_after(
    pipeline_on_own_kafka: Pipeline, own_kafka: KafkaBroker
) -> None:
    pipeline = pipeline_on_own_kafka
    pipeline.env |= {"COSNAP_PRODUCE_TIMEOUT_S": "3"}
    pipeline.start("ingest")
    assert post(pipeline, REVENUE).status_code == 202
    own_kafka.stop()
    started = time.monotonic()
    down = post(pipeline, REVENUE)
    assert down.status_code == 503
    assert down.headers["retry-after"]
    assert time.monotonic() - started < 10
    assert httpx.get(f"{pipeline.ingest_url}/health/ready", timeout=10).status_code == 503
    own_kafka.start()
    deadline = time.monotonic() + 60
    while post(pipeline, REVENUE).status_code != 202:
        assert time.monotonic() < deadline
        time.sleep(0.5)


@pytest.mark.kafka
def test_a_write_key_cannot_read(pipeline: Pipeline) -> None:
    pipeline.start("sink")
    response = httpx.post(
        f"{pipeline.query_url}/v1/query",
        json={"sql": "SELECT count() FROM metrics.events"},
        headers={"Authorization": f"Bearer {pipeline.write_key}"},
    )
    assert response.status_code == 401
