"""`cosnap-metrics run` as a user runs it: one command up, curl, query, Ctrl-C, nothing left."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

import clickhouse_connect
import httpx
import pytest

from tests.cosnap_metrics.runner import CLI, interrupt, query, runner_env, start

pytestmark = [pytest.mark.kafka, pytest.mark.e2e]


def test_run_serves_curl_and_query_then_stops_everything(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = runner_env(data_dir)
    ingest_port = int(env["COSNAP_INGEST_PORT"])
    runner, write_key = start(env, tmp_path / "run.log")
    try:
        assert (data_dir / "dev-write-key").read_text().strip() == write_key
        response = httpx.post(
            f"http://127.0.0.1:{ingest_port}/v1/events",
            headers={"Authorization": f"Bearer {write_key}"},
            json={"type": "revenue", "name": "subscription.renewal", "amount": "9.99", "currency": "USD"},
        )
        assert response.status_code == 202, response.text
        accepted = time.monotonic()
        while query(env, "SELECT count() FROM metrics.events").split() != ["count()", "1"]:
            assert time.monotonic() - accepted < 5, "event not queryable within 5 s"
            time.sleep(0.2)
        refused = subprocess.run(
            [CLI, "query", "DROP TABLE metrics.events"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode == 2 and "read statements" in refused.stderr
        # The development read key reads the store through ClickHouse's HTTP interface.
        read_key = (data_dir / "dev-read-key").read_text().strip()
        where = urlparse(env["COSNAP_CLICKHOUSE_HTTP_URL"])
        client = clickhouse_connect.get_client(
            host=where.hostname, port=where.port, username="default", password=read_key
        )
        assert client.query("SELECT count() FROM metrics.events").result_rows == [(1,)]
    finally:
        interrupt(runner)

    # With the pipeline stopped, the CLI opens chDB itself.
    assert query(env, "SELECT count() FROM metrics.events").split() == ["count()", "1"]

    # A second run reuses the data directory (and the broker cache): same key, same rows.
    runner, second_key = start(env, tmp_path / "run2.log")
    try:
        assert second_key == write_key
        assert query(env, "SELECT count() FROM metrics.events").split() == ["count()", "1"]
    finally:
        interrupt(runner, twice=True)
