"""`cosnap-metrics run --brokers 3`: the pipeline on a three-node Kafka cluster, end to end. Events
posted to the ingest land in ClickHouse exactly once, also those posted while a node is killed
(one node of three may die and writes go on) and while the runner starts it again."""

from __future__ import annotations

import os
import re
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import wait_for
from tests.cosnap_metrics.runner import child_running, interrupt, query, runner_env, start

pytestmark = [pytest.mark.kafka, pytest.mark.e2e]

EVENTS = 300  # posted in each phase: before the kill and right after it
POSTED_WITHIN_S = 120.0  # a batch answered 503 while leadership moves is sent again until then


def _post_until_accepted(client: httpx.Client, events: list[dict[str, Any]]) -> int:
    """Post `events` in batches of 50 as the SDKs do: a 503 is sent again, the same event ids,
    after its Retry-After (here at most 1 s). The 503s answered."""
    refused = 0
    deadline = time.monotonic() + POSTED_WITHIN_S
    for begin in range(0, len(events), 50):
        while True:
            response = client.post("/v1/events", json={"events": events[begin : begin + 50]}, timeout=60)
            if response.status_code == 202:
                assert response.json()["rejected"] == [], response.text
                break
            assert response.status_code == 503 and response.headers["Retry-After"], response.text
            assert time.monotonic() < deadline, "the ingest kept answering 503"
            refused += 1
            time.sleep(min(float(response.headers["Retry-After"]), 1.0))
    return refused


def _events(phase: str) -> list[dict[str, Any]]:
    return [
        {"type": "feature", "feature": phase, "action": "used", "event_id": str(uuid.uuid4())}
        for _ in range(EVENTS)
    ]


def test_run_with_three_brokers_stores_every_event_once_through_a_node_kill(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = runner_env(data_dir)
    log = tmp_path / "run.log"
    began = time.monotonic()
    runner, write_key = start(env, log, "--brokers", "3")
    try:
        text = log.read_text()
        ready = re.search(r"\[kafka\] ready in ([\d.]+) s", text)
        assert ready is not None, text
        banner = re.search(r"kafka\s+3 nodes: kafka-1 (\S+), kafka-2 (\S+), kafka-3 (\S+)\s+\((.*)\)", text)
        assert banner is not None, text
        assert banner[1] == env["COSNAP_KAFKA_BOOTSTRAP"] and len(set(banner.groups()[:3])) == 3
        assert banner[4] == "topics: 3 replicas, min.insync.replicas 2"
        assert (data_dir / "kafka-cluster" / "node-3" / "data" / "meta.properties").exists()
        started_s = time.monotonic() - began

        with httpx.Client(
            base_url=f"http://127.0.0.1:{env['COSNAP_INGEST_PORT']}",
            headers={"Authorization": f"Bearer {write_key}"},
        ) as client:
            assert _post_until_accepted(client, _events("before")) == 0
            node = child_running(runner, "kafka-2")
            assert node is not None
            os.kill(node, signal.SIGKILL)
            killed = time.monotonic()
            refused = _post_until_accepted(client, _events("during"))
            during_s = time.monotonic() - killed

        def said(line: str) -> bool:
            return line in log.read_text()

        assert wait_for(lambda: said("[run] kafka-2 ready again"), 120, interval=0.5), log.read_text()[-3000:]
        assert said("[run] kafka-2 exited (killed by SIGKILL)")
        # The console's state lines: the node down, then all three up again.
        down = "[run] kafka is 2 of 3 nodes up; kafka-2 is down (killed by SIGKILL)"
        assert said(down)
        assert wait_for(lambda: "[run] kafka is 3 of 3 nodes up" in log.read_text().split(down, 1)[1], 30)

        def stored() -> list[str]:
            sql = "SELECT count(), uniqExact(event_id) FROM metrics.events FINAL"
            return query(env, sql).split()[-2:]

        total = str(2 * EVENTS)
        assert wait_for(lambda: stored() == [total, total], 120, interval=1), stored()
    finally:
        interrupt(runner)
    figures = {"ready_s": float(ready[1]), "banner_s": started_s, "during_kill_s": during_s, "503s": refused}
    print(figures)  # shown with -s
