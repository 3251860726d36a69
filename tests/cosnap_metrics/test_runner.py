"""`cosnap-metrics run` as a user runs it: one command up, curl, query, Ctrl-C, nothing left."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import clickhouse_connect
import httpx
import pytest

from tests.conftest import free_port

pytestmark = [pytest.mark.kafka, pytest.mark.e2e]


def _descendants(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        children = (task / "children").read_text().split() if (task / "children").exists() else []
        for child in map(int, children):
            found |= {child, *_descendants(child)}
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _start(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    with log.open("ab") as out:
        runner = subprocess.Popen(  # the console script, as `make run` starts it
            [str(Path(sys.executable).parent / "cosnap-metrics"), "run"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        match = re.search(r"write key\s+(cmk_\S+)", text)
        if match:
            return runner, match.group(1)
        assert runner.poll() is None, text[-3000:]
        time.sleep(0.3)
    raise AssertionError(log.read_text(errors="replace")[-3000:])


def _query(env: dict[str, str], sql: str) -> str:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "cosnap-metrics"), "query", sql],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _interrupt(runner: subprocess.Popen[bytes]) -> None:
    """Ctrl-C, then check that every process the runner started is gone."""
    started = _descendants(runner.pid)
    assert len(started) >= 4, started  # the broker, sink, streams and ingest at least
    runner.send_signal(signal.SIGINT)
    assert runner.wait(timeout=120) == 0
    time.sleep(0.5)
    assert [pid for pid in started if _alive(pid)] == []


def test_run_serves_curl_and_query_then_stops_everything(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    ingest_port = free_port()
    env = os.environ | {
        "COSNAP_DATA_DIR": str(data_dir),
        "COSNAP_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
        "COSNAP_KAFKA_CONTROLLER_PORT": str(free_port()),
        "COSNAP_INGEST_PORT": str(ingest_port),
        "COSNAP_QUERY_URL": f"http://127.0.0.1:{free_port()}",
        "COSNAP_CLICKHOUSE_HTTP_URL": f"http://127.0.0.1:{free_port()}",
    }
    runner, write_key = _start(env, tmp_path / "run.log")
    try:
        assert (data_dir / "dev-write-key").read_text().strip() == write_key
        response = httpx.post(
            f"http://127.0.0.1:{ingest_port}/v1/events",
            headers={"Authorization": f"Bearer {write_key}"},
            json={"type": "revenue", "name": "subscription.renewal", "amount": "9.99", "currency": "USD"},
        )
        assert response.status_code == 202, response.text
        accepted = time.monotonic()
        while _query(env, "SELECT count() FROM metrics.events").split() != ["count()", "1"]:
            assert time.monotonic() - accepted < 5, "event not queryable within 5 s"
            time.sleep(0.2)
        refused = subprocess.run(
            [str(Path(sys.executable).parent / "cosnap-metrics"), "query", "DROP TABLE metrics.events"],
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
        _interrupt(runner)

    # With the pipeline stopped, the CLI opens chDB itself.
    assert _query(env, "SELECT count() FROM metrics.events").split() == ["count()", "1"]

    # A second run reuses the data directory (and the broker cache): same key, same rows.
    runner, second_key = _start(env, tmp_path / "run2.log")
    try:
        assert second_key == write_key
        assert _query(env, "SELECT count() FROM metrics.events").split() == ["count()", "1"]
    finally:
        _interrupt(runner)
