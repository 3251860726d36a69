"""`cosnap-metrics run` started as a user starts it, for the tests of the runner: on free ports,
its console in a file, and the processes it started found through /proc."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import free_port

CLI = str(Path(sys.executable).parent / "cosnap-metrics")


def runner_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a run on its own data directory and free loopback ports."""
    return (
        os.environ
        | {
            "COSNAP_DATA_DIR": str(data_dir),
            "COSNAP_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
            "COSNAP_KAFKA_CONTROLLER_PORT": str(free_port()),
            "COSNAP_INGEST_PORT": str(free_port()),
            "COSNAP_QUERY_URL": f"http://127.0.0.1:{free_port()}",
            "COSNAP_CLICKHOUSE_HTTP_URL": f"http://127.0.0.1:{free_port()}",
            "COSNAP_STREAMS_METRICS_PORT": str(free_port()),
            "COSNAP_NOTIFY_METRICS_PORT": str(free_port()),
            "COSNAP_RUN_METRICS_PORT": str(free_port()),
        }
        | extra
    )


def launch(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    """The console script, as `make run` starts it (with `args`), writing its console to `log`."""
    with log.open("ab") as out:
        return subprocess.Popen([CLI, "run", *args], env=env, stdout=out, stderr=subprocess.STDOUT)


def start(env: dict[str, str], log: Path, *args: str) -> tuple[subprocess.Popen[bytes], str]:
    """Launch the runner and wait for its banner; the runner and the development write key."""
    runner = launch(env, log, *args)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        match = re.search(r"write key\s+(cmk_\S+)", text)
        if match:
            return runner, match.group(1)
        assert runner.poll() is None, text[-3000:]
        time.sleep(0.3)
    raise AssertionError(log.read_text(errors="replace")[-3000:])


def children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found |= set(map(int, (task / "children").read_text().split()))
        except (FileNotFoundError, ProcessLookupError):  # the task ended since it was listed
            continue
    return found


def descendants(pid: int) -> set[int]:
    found: set[int] = set()
    for child in children(pid):
        found |= {child, *descendants(child)}
    return found


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, exited and not reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def query(env: dict[str, str], sql: str) -> str:
    """`cosnap-metrics query` of the run of `env`: its output (TSV with a header)."""
    result = subprocess.run(
        [CLI, "query", sql],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def interrupt(runner: subprocess.Popen[bytes], twice: bool = False) -> None:
    """Ctrl-C (`twice`: and again, which kills every process at once), then check that every
    process the runner started is gone."""
    started = descendants(runner.pid)
    assert len(started) >= 4, started  # the broker, sink, streams and ingest at least
    runner.send_signal(signal.SIGINT)
    if twice:
        time.sleep(0.5)  # two signals sent at once may reach the runner as one
        runner.send_signal(signal.SIGINT)
    assert runner.wait(timeout=120) == (130 if twice else 0)
    time.sleep(0.5)
    assert [pid for pid in started if alive(pid)] == []


def child_running(runner: subprocess.Popen[bytes], name: str) -> int | None:
    """The pid of the runner's child `name` (`kafka`, a node of a cluster: `kafka-2`, or a
    service: `sink`, `ingest`, ...)."""
    if name == "kafka":
        wanted = "kafka.Kafka"
    elif name.startswith("kafka-"):
        wanted = f"/node-{name.removeprefix('kafka-')}/server.properties"
    else:
        wanted = f"cosnap_metrics.cli {name}"
    for pid in children(runner.pid):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except FileNotFoundError:
            continue
        if wanted in command and alive(pid):
            return pid
    return None
