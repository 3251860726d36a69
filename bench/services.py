"""The pipeline's services as child processes of a benchmark, on the benchmark's own broker.

`Services(bench)` starts the sink (embedded chDB and its query service), the streams worker and
the ingest API as `make run` starts them, with every port free and chosen here, each logging to
`<work>/<name>.log`; `Services(bench, ("sink",))` starts only some of them. The ingest's per-key
rate limit is off (benchmarks post far more than a client may).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from bench.kafka import Bench
from cosnap_metrics.processes import spawn, stop
from cosnap_metrics.supervisor import wait_http
from plumbing.keys import KeyStore, ensure_dev_key
from tests.conftest import free_port

PIPELINE = ("sink", "streams", "ingest")


class Services:
    """Some of the pipeline's services (in PIPELINE's order), their data in `data` (default
    `<work>/data`) and logs in the bench's directory."""

    def __init__(
        self,
        bench: Bench,
        names: Sequence[str] = PIPELINE,
        *,
        data: Path | None = None,
        log_level: str = "WARNING",
        env: dict[str, str] | None = None,
    ) -> None:
        self.names = [name for name in PIPELINE if name in names]
        self.work = bench.work
        self.data = data or bench.work / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        ingest_port = free_port()
        self.ingest_url = f"http://127.0.0.1:{ingest_port}"
        self.query_url = f"http://127.0.0.1:{free_port()}"
        self.env = os.environ | {
            "COSNAP_DATA_DIR": str(self.data),
            "COSNAP_KAFKA_BOOTSTRAP": bench.bootstrap,
            "COSNAP_TOPIC_PREFIX": bench.topics.prefix,
            "COSNAP_INGEST_PORT": str(ingest_port),
            "COSNAP_QUERY_URL": self.query_url,
            "COSNAP_CLICKHOUSE_HTTP_URL": f"http://127.0.0.1:{free_port()}",
            "COSNAP_STREAMS_METRICS_PORT": str(free_port()),
            "COSNAP_SINK_METRICS_PORT": str(free_port()),
            "COSNAP_NOTIFY_METRICS_PORT": str(free_port()),
            "COSNAP_RATE_LIMIT_EVENTS_PER_S": "0",
            "COSNAP_LOG_LEVEL": log_level,
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.write_key = ensure_dev_key(KeyStore(self.data / "write-keys.json"), self.data)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, wait: bool = True) -> None:
        """Spawn the services; unless `wait` is False, return once the sink's query service and
        the ingest (those started) answer."""
        for name in self.names:
            with (self.work / f"{name}.log").open("ab") as log:
                self.processes[name] = spawn(
                    [sys.executable, "-m", "cosnap_metrics.cli", name], env=self.env, stdout=log
                )
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 120) -> None:
        if "sink" in self.processes:
            wait_http(f"{self.query_url}/health", self.processes["sink"], timeout)
        if "ingest" in self.processes:
            wait_http(f"{self.ingest_url}/health/ready", self.processes["ingest"], timeout)

    def dead(self) -> list[str]:
        return [name for name, process in self.processes.items() if process.poll() is not None]

    def tail(self, name: str, lines: int = 20) -> str:
        text = (self.work / f"{name}.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def query(self, sql: str) -> list[list[Any]]:
        """Rows of a read through the sink's query service."""
        token = (self.data / "query-token").read_text().strip()
        response = httpx.post(
            f"{self.query_url}/v1/query",
            json={"sql": sql},
            headers={"Authorization": f"Bearer {token}"},
            timeout=120,
        )
        response.raise_for_status()
        rows: list[list[Any]] = response.json()["rows"]
        return rows

    def cli(self, *args: str, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cosnap_metrics.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def stop(self) -> None:
        for name in reversed(self.names):
            if name in self.processes:
                stop(self.processes[name], 30)
