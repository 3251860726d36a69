"""Issue 17 on a runner of its own (real broker, chDB, notifier): `cosnap-metrics validate`
against it in its first minute passes every step and moves the status line; the console a
person sees in that minute has state lines and status lines, no JSON, no library chatter; with
the sink stopped (SIGSTOP, so the runner does not restart it) the ClickHouse step fails by its
`--timeout` and the exit status is 1."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from cosnap_metrics.console import STATUS_LINE_EVERY_S
from tests.conftest import free_port
from tests.cosnap_metrics.runner import CLI, child_running, launch, runner_env

pytestmark = [pytest.mark.kafka, pytest.mark.e2e]

FIRST_MINUTE_JSON_LINES = 3  # the bound


def _validate(env: dict[str, str], listen: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, "validate", "--webhook-listen", listen, *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _status_lines(console: Path) -> list[str]:
    return [line for line in console.read_text().splitlines() if line.startswith("[run] in ")]


def test_console_and_validate_pass_and_a_stopped_sink_fails_the_clickhouse_step(tmp_path: Path) -> None:
    listen = f"127.0.0.1:{free_port()}"
    env = runner_env(tmp_path / "data", COSNAP_VALIDATE_WEBHOOK_URL=f"http://{listen}/")
    console = tmp_path / "console.log"
    launched = time.monotonic()
    runner = launch(env, console)
    try:
        while not _status_lines(console):  # the first status line follows the banner, idle
            assert runner.poll() is None, console.read_text()[-3000:]
            assert time.monotonic() - launched < 180, console.read_text()[-3000:]
            time.sleep(0.5)
        idle = _status_lines(console)
        assert "write key" in console.read_text() and idle[-1].startswith("[run] in 0.0 ev/s | lag 0 |"), idle

        # validate runs within the first minute, which its events and alert make a busy one.
        passed = _validate(env, listen)
        assert passed.returncode == 0, passed.stdout + passed.stderr
        steps = [line for line in passed.stdout.splitlines() if line[:6] in ("PASS  ", "FAIL  ")]
        assert [line.split()[1] for line in steps] == [
            "ingest",
            "ingest",
            "query",
            "events",
            "clickhouse",
            "alert",
        ]
        assert all(line.startswith("PASS") for line in steps), passed.stdout

        # The events of validate show in the status line (its rate, and the alert firing).
        time.sleep(max(60 - (time.monotonic() - launched), 2 * STATUS_LINE_EVERY_S) + 0.5)
        assert _status_lines(console)[len(idle) :], console.read_text()[-2000:]
        assert any("alerts firing 1" in line for line in _status_lines(console)), _status_lines(console)
        first_minute = console.read_text().splitlines()
        json_lines = [line for line in first_minute if line.lstrip().startswith("{")]
        assert len(json_lines) <= FIRST_MINUTE_JSON_LINES, json_lines
        assert not [line for line in first_minute if "aiokafka" in line or "uvicorn" in line], first_minute
        for service in ("sink", "ingest", "streams", "notify"):
            assert any(line.startswith(f"[run] {service} is ") for line in first_minute), first_minute

        sink = child_running(runner, "sink")
        assert sink is not None
        os.kill(sink, signal.SIGSTOP)
        try:
            failed = _validate(env, listen, "--timeout", "10")
        finally:
            os.kill(sink, signal.SIGCONT)
        assert failed.returncode == 1, failed.stdout + failed.stderr
        assert any(line.startswith("FAIL  clickhouse") for line in failed.stdout.splitlines()), failed.stdout
        assert "events in metrics.events" in failed.stdout, failed.stdout  # the query failed, not skipped
        assert failed.stdout.splitlines()[-1].startswith("FAILED:"), failed.stdout
    finally:
        runner.send_signal(signal.SIGINT)
        runner.wait(timeout=120)
