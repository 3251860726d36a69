"""`cosnap-metrics run` supervises what it starts (issue 22), on a real broker and chDB: a process
killed with SIGKILL is noticed, named on the console and started again, the pipeline is ready
and takes events again within seconds, no event accepted before is lost, the console stays
readable through the outage; SIGTERM stops everything within seconds even with the broker dead;
a service that cannot start stops the run with the reason.

Each runner started here is killed into, so it is the tests' own; the scenarios share one
runner where one can follow another."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, wait_for
from tests.cosnap_metrics.runner import alive, child_running, children, descendants, launch, runner_env, start

pytestmark = [pytest.mark.kafka, pytest.mark.e2e]

# The bounds of issue 22.
READY_WITHIN_S = 30.0  # from the kill to the ingest's /health/ready
LANDS_WITHIN_S = 60.0  # from the 202 of an event posted then to its row in metrics.events
OUTAGE_LINES = 40  # console lines from the kill until that event landed
STOPPED_WITHIN_S = 15.0  # from SIGTERM, the broker dead, to no process left


@dataclass
class Run:
    """A runner of this module, and every event it accepted."""

    runner: subprocess.Popen[bytes]
    env: dict[str, str]
    console: Path
    write_key: str
    accepted: list[str] = field(default_factory=list)

    @property
    def ingest(self) -> str:
        return f"http://127.0.0.1:{self.env['COSNAP_INGEST_PORT']}"

    def lines(self) -> list[str]:
        return self.console.read_text(errors="replace").splitlines()

    def post(self, count: int) -> list[str] | None:
        """Post `count` events; their ids when accepted (202), None when refused or unreachable."""
        ids = [uuid.uuid4().hex for _ in range(count)]
        events = [{"type": "feature", "feature": "supervision", "action": "kill", "event_id": i} for i in ids]
        try:
            response = httpx.post(
                f"{self.ingest}/v1/events",
                headers={"Authorization": f"Bearer {self.write_key}"},
                json={"events": events},
                timeout=30,
            )
        except httpx.HTTPError:
            return None
        if response.status_code != 202:
            assert response.status_code == 503, response.text  # Kafka unavailable, never the input
            return None
        self.accepted += ids
        return ids

    def stored(self, ids: list[str]) -> int | None:
        """How many of `ids` metrics.events holds; None while the sink's query service is down."""
        token = (Path(self.env["COSNAP_DATA_DIR"]) / "query-token").read_text().strip()
        listed = ",".join(f"'{event_id}'" for event_id in ids)  # hex made by this module
        sql = f"SELECT uniqExact(event_id) FROM metrics.events WHERE event_id IN ({listed})"  # noqa: S608
        try:
            response = httpx.post(
                f"{self.env['COSNAP_QUERY_URL']}/v1/query",
                json={"sql": sql},
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            )
        except httpx.HTTPError:
            return None
        return int(response.json()["rows"][0][0]) if response.status_code == 200 else None

    def answers(self, url: str) -> bool:
        try:
            return httpx.get(url, timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def ready(self) -> bool:
        return self.answers(f"{self.ingest}/health/ready")


def _detailed_problems(run: Run) -> list[str]:
    try:
        problems: list[str] = httpx.get(f"{run.ingest}/health/detailed", timeout=15).json()["problems"]
    except (httpx.HTTPError, ValueError):
        return []
    return problems


def _kill_and_recover(run: Run, name: str) -> dict[str, float]:
    """SIGKILL the runner's `name` and check the issue's bounds; the figures measured."""
    before = run.post(20)
    assert before is not None, "events refused before the kill"
    pid = child_running(run.runner, name)
    assert pid is not None, f"no {name} among the runner's children"
    first_line = len(run.lines())
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()

    named: list[str] = []
    while not run.ready():
        if name == "kafka" and not named:
            # /health/detailed names what is missing, and (through the sink's report) since when.
            named = [p for p in _detailed_problems(run) if "Kafka unreachable since" in p]
        assert time.monotonic() - killed < READY_WITHIN_S, (
            f"not ready {READY_WITHIN_S:.0f} s after {name} died"
        )
        time.sleep(0.3)
    ready_s = time.monotonic() - killed
    if name == "kafka":
        assert named, "/health/detailed never said since when Kafka was unreachable"

    after = wait_for(lambda: run.post(1), timeout=30, interval=0.5)
    assert after is not None, f"events refused after {name} came back"
    posted = time.monotonic()
    assert wait_for(lambda: run.stored(after) == 1, timeout=LANDS_WITHIN_S, interval=0.5), (
        f"the event posted after {name} came back is not in metrics.events within {LANDS_WITHIN_S:.0f} s"
    )
    lands_s = time.monotonic() - posted
    outage = run.lines()[first_line:]
    assert len(outage) <= OUTAGE_LINES, "\n".join(outage)
    assert any(line.startswith(f"[run] {name} exited (killed by SIGKILL)") for line in outage), outage

    # Nothing accepted is lost: every event of a 202, before the kill too.
    everything = run.accepted
    assert wait_for(lambda: run.stored(everything) == len(everything), timeout=LANDS_WITHIN_S, interval=1), (
        f"{len(everything) - (run.stored(everything) or 0)} accepted events missing after {name} came back"
    )
    # Started again (a new process, reaped the old: no zombie among the runner's children).
    assert wait_for(lambda: child_running(run.runner, name) not in (None, pid), timeout=60), name
    assert all(alive(child) for child in children(run.runner.pid))
    if name in ("streams", "notify"):
        health = f"http://127.0.0.1:{run.env[f'COSNAP_{name.upper()}_METRICS_PORT']}/health"
        assert wait_for(lambda: run.answers(health), timeout=60), f"the new {name} is not healthy"
    return {"ready_s": ready_s, "lands_s": lands_s, "console_lines": len(outage)}


def _listening(ports: set[int]) -> set[int]:
    """Those of `ports` some socket listens on (loopback, IPv4 or IPv6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) in ports:
                found.add(int(local.rsplit(":", 1)[1], 16))
    return found


def _ports(env: dict[str, str]) -> set[int]:
    names = ("COSNAP_KAFKA_BOOTSTRAP", "COSNAP_QUERY_URL", "COSNAP_CLICKHOUSE_HTTP_URL")
    return {int(env[n].rsplit(":", 1)[1]) for n in names} | {
        int(env[n])
        for n in (
            "COSNAP_KAFKA_CONTROLLER_PORT",
            "COSNAP_INGEST_PORT",
            "COSNAP_STREAMS_METRICS_PORT",
            "COSNAP_NOTIFY_METRICS_PORT",
            "COSNAP_RUN_METRICS_PORT",
        )
    }


def _stop_with_the_broker_dead(run: Run) -> dict[str, float]:
    """Kill the broker, let the services find it gone, then SIGTERM the runner."""
    pid = child_running(run.runner, "kafka")
    assert pid is not None
    first_line = len(run.lines())
    started = descendants(run.runner.pid)
    os.kill(pid, signal.SIGKILL)
    assert wait_for(
        lambda: sum("WARNING Kafka unreachable" in line for line in run.lines()[first_line:]) >= 3, timeout=30
    ), run.lines()[first_line:]
    started |= descendants(run.runner.pid)
    stopping = len(run.lines())
    run.runner.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    code = run.runner.wait(timeout=120)
    assert wait_for(lambda: not [p for p in started if alive(p)], timeout=STOPPED_WITHIN_S)
    gone_s = time.monotonic() - signalled
    assert gone_s <= STOPPED_WITHIN_S, f"processes left {gone_s:.1f} s after SIGTERM"
    assert _listening(_ports(run.env)) == set()
    said = run.lines()[stopping:]
    # Every service stopped by itself (none was killed at the runner's deadline); the exit status
    # says whether the stop was clean, and the last line what was not written out.
    verdict = said[-1]
    assert "was killed" not in verdict, said
    if code == 0:
        assert verdict.startswith("[run] stopped in "), said
    else:  # and the service's own line says what it could not write out
        assert code == 1 and "not cleanly: " in verdict, said
        assert any("not written out: " in line or "stopped with " in line for line in said), said
    return {"stopped_s": gone_s, "exit_status": code}


def test_every_process_killed_comes_back_nothing_accepted_is_lost_and_sigterm_stops_all(
    tmp_path: Path,
) -> None:
    # A webhook target, so that the runner starts the notifier too (no alert fires: it gets nothing).
    secret = "whsec_" + base64.b64encode(bytes(24)).decode()
    hook = {"COSNAP_WEBHOOK_URLS": f"http://127.0.0.1:{free_port()}/hook", "COSNAP_WEBHOOK_SECRET": secret}
    env = runner_env(tmp_path / "data", **hook)
    runner, write_key = start(env, tmp_path / "run.log")
    run = Run(runner, env, tmp_path / "run.log", write_key)
    figures = {}
    try:
        names = ("kafka", "streams", "sink", "ingest", "notify")
        for name in names:
            figures[name] = _kill_and_recover(run, name)
        restarts = httpx.get(f"http://127.0.0.1:{env['COSNAP_RUN_METRICS_PORT']}/health", timeout=10).json()
        assert {name: child["restarts"] for name, child in restarts["details"].items()} == dict.fromkeys(
            names, 1
        )
        # The ingest's /health/detailed shows the runner's processes and their restarts too.
        detailed = httpx.get(f"{run.ingest}/health/detailed", timeout=30).json()
        assert detailed["supervisor"]["details"] == restarts["details"]
        # Whatever was killed, every final window equals a recount of the events stored.
        reconcile = subprocess.run(
            [sys.executable, "-m", "cosnap_metrics.cli", "reconcile"],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert reconcile.returncode == 0, reconcile.stdout + reconcile.stderr
        assert " windows match metrics.events" in reconcile.stdout.strip().splitlines()[-1]
        figures["stop"] = _stop_with_the_broker_dead(run)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
    print(figures)  # the figures of issue 22, shown with -s


def test_a_service_that_fails_at_once_stops_the_run_with_the_reason(tmp_path: Path) -> None:
    # A webhook secret that is not base64: the notifier exits with status 2 as it starts.
    broken = {"COSNAP_WEBHOOK_URLS": "http://127.0.0.1:9/hook", "COSNAP_WEBHOOK_SECRET": "whsec_***"}
    env = runner_env(tmp_path / "data", **broken)
    runner = launch(env, tmp_path / "run.log")
    started: set[int] = set()
    deadline = time.monotonic() + 300
    while runner.poll() is None and time.monotonic() < deadline:
        started |= descendants(runner.pid)
        time.sleep(0.2)
    code = runner.wait(timeout=30)
    console = (tmp_path / "run.log").read_text(errors="replace")
    assert code == 1, console
    assert "[run] notify exited 5 times within 5 minutes (last: exit status 2); stopping" in console
    assert "[notify] ERROR COSNAP_WEBHOOK_SECRET: a webhook secret is 'whsec_' followed by base64" in console
    assert console.count("[run] notify started again") == 4
    assert wait_for(lambda: not [p for p in started if alive(p)], timeout=STOPPED_WITHIN_S)
