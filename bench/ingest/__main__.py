"""Ingest throughput and latency, producing vs not producing, in one run.

    python -m bench.ingest [--seconds 10]

Starts a real Apache Kafka broker, the ingest API (producing, acks=all) and the same API with
producing switched off (bench/ingest/null_server.py), then drives both with `hey` (Debian's
HTTP load generator): 50-event batches and single events, at full load (64 connections), and
the producing server again at half its full-load rate to read its p99 latency.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx

from cosnap_metrics.broker import BrokerConfig, KafkaBroker, fetch_kafka
from cosnap_metrics.processes import spawn, stop
from cosnap_metrics.provision import ensure_topics
from ingest.keys import KeyStore
from schemas.settings import RunnerSettings
from schemas.topics import Topics
from tests.conftest import free_port

CONNECTIONS = 64


@dataclass(frozen=True)
class Load:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    non_202: int


def hey(url: str, key: str, body: Path, seconds: int, connections: int, rate_per_worker: float = 0) -> Load:
    argv = [
        "hey", "-z", f"{seconds}s", "-c", str(connections), "-m", "POST", "-T", "application/json",
        "-H", f"Authorization: Bearer {key}", "-D", str(body),
    ]  # fmt: skip
    if rate_per_worker:
        argv += ["-q", f"{rate_per_worker:.2f}"]
    out = subprocess.run([*argv, url], capture_output=True, text=True, check=True).stdout  # noqa: S603
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = float(re.search(r"50% in ([\d.]+) secs", out).group(1)) * 1000  # type: ignore[union-attr]
    p99 = float(re.search(r"99% in ([\d.]+) secs", out).group(1)) * 1000  # type: ignore[union-attr]
    statuses = dict(re.findall(r"\[(\d{3})\]\s+(\d+) responses", out))
    non_202 = sum(int(n) for code, n in statuses.items() if code != "202")
    return Load(rps, p50, p99, non_202)


def event(i: int) -> dict[str, object]:
    return {
        "event_id": uuid.uuid4().hex,
        "type": "performance",
        "metric": "api.latency",
        "value": 100.0 + i % 50,
        "unit": "ms",
        "user_id": f"u{i}",
        "tags": {"route": "/api/effects/apply", "status": "200"},
    }


def wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, f"server exited with {process.returncode}"
        try:
            if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} not ready")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=10, help="length of each load run")
    args = parser.parse_args()
    if shutil.which("hey") is None:
        raise SystemExit("needs `hey` (apt-get install hey); `make bench` installs it")

    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    settings = RunnerSettings()
    broker = KafkaBroker(
        BrokerConfig(
            fetch_kafka(settings.kafka_version, settings.kafka_cache_dir),
            work / "kafka",
            free_port(),
            free_port(),
        )
    )
    broker.start()
    topics = Topics(f"bench{uuid.uuid4().hex[:6]}.")
    ensure_topics(broker.bootstrap, topics)
    key = KeyStore(work / "write-keys.json").create("bench")
    batch_body, single_body = work / "batch.json", work / "single.json"
    batch_body.write_text(json.dumps({"events": [event(i) for i in range(50)]}))
    single_body.write_text(json.dumps(event(0) | {"event_id": None}))

    servers: dict[str, tuple[str, subprocess.Popen[bytes]]] = {}
    env = os.environ | {
        "COSNAP_DATA_DIR": str(work),
        "COSNAP_KAFKA_BOOTSTRAP": broker.bootstrap,
        "COSNAP_TOPIC_PREFIX": topics.prefix,
        "COSNAP_RATE_LIMIT_EVENTS_PER_S": "0",
        "COSNAP_LOG_LEVEL": "WARNING",
    }
    try:
        for name, argv in {
            "validate-only": [sys.executable, "-m", "bench.ingest.null_server"],
            "producing": [sys.executable, "-m", "cosnap_metrics.cli", "ingest"],
        }.items():
            port = free_port()
            with (work / f"{name}.log").open("ab") as log:
                process = spawn(argv, env=env | {"COSNAP_INGEST_PORT": str(port)}, stdout=log)
            url = f"http://127.0.0.1:{port}"
            servers[name] = (url, process)
            wait_ready(url, process)

        rows = []
        print(
            f"ingest benchmark, {args.seconds} s per run, {CONNECTIONS} connections, one uvicorn worker each"
        )
        for shape, body, events_per_request in [
            ("50-event batches", batch_body, 50),
            ("single events", single_body, 1),
        ]:
            results = {}
            for name, (url, _) in servers.items():
                hey(f"{url}/v1/events", key, body, 2, CONNECTIONS)  # warm-up
                results[name] = hey(f"{url}/v1/events", key, body, args.seconds, CONNECTIONS)
                print(
                    f"  {shape:17s} {name:13s} {results[name].requests_per_s * events_per_request:9.0f} ev/s "
                    f"{results[name].requests_per_s:7.0f} req/s  p50 {results[name].p50_ms:6.1f} ms  "
                    f"p99 {results[name].p99_ms:6.1f} ms  non-202 {results[name].non_202}",
                    flush=True,
                )
            ratio = results["producing"].requests_per_s / results["validate-only"].requests_per_s
            half_rate = results["producing"].requests_per_s / 2
            url = servers["producing"][0]
            half = hey(f"{url}/v1/events", key, body, args.seconds, 16, rate_per_worker=half_rate / 16)
            print(
                f"  {shape:17s} ratio producing/validate-only {ratio:.2f}; at half load "
                f"({half.requests_per_s:.0f} req/s): p50 {half.p50_ms:.1f} ms, p99 {half.p99_ms:.1f} ms",
                flush=True,
            )
            rows.append((shape, results, ratio, half, events_per_request))

        print("\n| body | validate-only ev/s | producing ev/s | ratio | p99 at half load |")
        print("|---|---|---|---|---|")
        for shape, results, ratio, half, per in rows:
            print(
                f"| {shape} | {results['validate-only'].requests_per_s * per:,.0f} | "
                f"{results['producing'].requests_per_s * per:,.0f} | {ratio:.2f} | {half.p99_ms:.1f} ms |"
            )
        print(f"\nmeasured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores")
        return 0 if all(ratio >= 0.8 and half.p99_ms < 50 for _, _, ratio, half, _ in rows) else 1
    finally:
        for _, process in servers.values():
            stop(process, 20)
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
