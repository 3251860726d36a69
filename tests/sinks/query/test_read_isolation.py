"""Reads never stall writes, and every read is limited (issue 13): with runaway reads running in
the sink's query service, events still land in `metrics.events` within seconds of their 202 and
`/health` answers; reads beyond `COSNAP_QUERY_MAX_CONCURRENT` get 429; a read whose client goes
away is killed and its session freed; a read past a limit gets 400 naming it."""

from __future__ import annotations

import statistics
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime

import httpx
import pytest

from tests.conftest import Pipeline, wait_for
from tests.sinks.query.test_reader import RUNAWAY

pytestmark = [pytest.mark.kafka, pytest.mark.e2e]


def _post_query(pipeline: Pipeline, sql: str, timeout: float = 60) -> httpx.Response:
    token = (pipeline.data_dir / "query-token").read_text().strip()
    return httpx.post(
        f"{pipeline.query_url}/v1/query",
        json={"sql": sql},
        headers={"Authorization": f"Bearer {token}"},
        timeout=timeout,
    )


class Runaway(threading.Thread):
    """A runaway read posted to the query service; `response` once it ends, `error` if the
    client gave up first."""

    def __init__(self, pipeline: Pipeline, client_timeout: float) -> None:
        super().__init__(daemon=True)
        self.pipeline, self.client_timeout = pipeline, client_timeout
        self.response: httpx.Response | None = None
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            self.response = _post_query(self.pipeline, RUNAWAY, timeout=self.client_timeout)
        except httpx.TimeoutException as exc:
            self.error = exc


def test_inserts_keep_their_freshness_while_runaway_reads_run(pipeline: Pipeline) -> None:
    # The runaways burn both cores until their 30 s limit: events are posted for 15 s (at least
    # 10 of them, each visible within 10 s), so the measurement ends while they still run.
    pipeline.env |= {"COSNAP_QUERY_TIMEOUT_S": "30"}
    pipeline.start("sink", "ingest")
    runaways = [Runaway(pipeline, client_timeout=120) for _ in range(2)]
    for runaway in runaways:
        runaway.start()
    time.sleep(1)  # both reads are under way (and still are after the last event, asserted below)

    freshness, health = [], []
    measuring = time.monotonic()
    with httpx.Client(
        base_url=pipeline.ingest_url, headers={"Authorization": f"Bearer {pipeline.write_key}"}
    ) as client:
        for i in range(40):
            if i >= 10 and time.monotonic() - measuring > 15:
                break
            event_id = f"fresh-{uuid.uuid4().hex}"
            event = {
                "event_id": event_id,
                "timestamp": datetime.now(UTC).isoformat(),
                "type": "feature",
                "feature": "export",
                "action": "clicked",
            }
            assert client.post("/v1/events", json={"events": [event]}).status_code == 202
            accepted = time.monotonic()
            visible = f"SELECT count() FROM metrics.events WHERE event_id = '{event_id}'"  # noqa: S608
            assert wait_for(lambda sql=visible: pipeline.query(sql) == [[1]], 10, interval=0.05), i
            freshness.append(time.monotonic() - accepted)
            if i % 10 == 0:
                asked = time.monotonic()
                assert httpx.get(f"{pipeline.query_url}/health", timeout=5).status_code == 200
                health.append(time.monotonic() - asked)
    assert all(r.is_alive() for r in runaways), "the runaway reads ended before the measurement did"

    freshness.sort()
    p99 = freshness[int(len(freshness) * 0.99) - 1]
    print(f"freshness with 2 runaway reads: p50 {statistics.median(freshness):.2f} s, p99 {p99:.2f} s, "
          f"max {freshness[-1]:.2f} s; /health {max(health):.2f} s at most")  # fmt: skip
    assert p99 <= 5.0
    assert max(health) < 2.0

    for runaway in runaways:  # the runaways end at their time limit, which the answer names
        runaway.join(timeout=90)
        assert runaway.response is not None and runaway.response.status_code == 400
        assert runaway.response.json()["limit"] == "max_execution_time"


def test_reads_beyond_the_sessions_get_429_and_a_gone_client_frees_its_session(pipeline: Pipeline) -> None:
    pipeline.env |= {"COSNAP_QUERY_MAX_CONCURRENT": "1", "COSNAP_QUERY_TIMEOUT_S": "120"}
    pipeline.start("sink")
    runaway = Runaway(pipeline, client_timeout=4)  # the client gives up after 4 s and hangs up
    runaway.start()
    time.sleep(1.5)
    busy = _post_query(pipeline, "SELECT 1")
    assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
    assert busy.json()["error"] == "busy" and "COSNAP_QUERY_MAX_CONCURRENT" in busy.json()["detail"]

    runaway.join(timeout=10)
    assert isinstance(runaway.error, httpx.TimeoutException)
    gone = time.monotonic()
    # Without the kill the one session would stay taken for the read's 120 s.
    assert wait_for(lambda: _post_query(pipeline, "SELECT 1").status_code == 200, 10, interval=0.2)
    assert time.monotonic() - gone < 10
    assert "cancelling its read" in pipeline.log("sink")


def test_a_read_past_a_limit_is_told_which(pipeline: Pipeline) -> None:
    pipeline.env |= {"COSNAP_QUERY_TIMEOUT_S": "1", "COSNAP_QUERY_MAX_RESULT_ROWS": "10"}
    pipeline.start("sink")
    started = time.monotonic()
    timed_out = _post_query(pipeline, RUNAWAY)
    assert time.monotonic() - started < 5
    assert timed_out.status_code == 400, timed_out.text
    assert timed_out.json()["limit"] == "max_execution_time"
    assert "COSNAP_QUERY_TIMEOUT_S" in timed_out.json()["detail"]

    too_many = _post_query(pipeline, "SELECT number FROM numbers(100)")
    assert too_many.status_code == 400 and too_many.json()["limit"] == "max_result_rows"

    cli = subprocess.run(
        [sys.executable, "-m", "cosnap_metrics.cli", "query", "SELECT number FROM numbers(100)"],
        env=pipeline.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (
        cli.returncode == 2
        and "max_result_rows" in cli.stderr
        and "COSNAP_QUERY_MAX_RESULT_ROWS" in cli.stderr
    )
