"""Ingest throughput and latency, producing vs not producing, in one run.

    python -m bench.ingest [--seconds 8] [--rounds 3]

Starts a real Apache Kafka broker, the ingest API (producing, acks=all) and the same API with
producing switched off (bench/ingest/null_server.py), then drives both with bench/loadgen (a
small Go load generator): 50-event batches and single events at full load (64 connections),
alternating the two servers round by round so that machine noise hits both alike, and then the
producing server open-loop at half its full-load rate to read its latency percentiles.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

from bench.kafka import Bench, bench_kafka
from cosnap_metrics.processes import spawn, stop
from plumbing.keys import KeyStore
from schemas.settings import RunnerSettings
from tests.conftest import free_port

CONNECTIONS = 64
LOADGEN_SOURCE = Path(__file__).resolve().parents[1] / "loadgen"


@dataclass(frozen=True)
class Load:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    non_202: int
    # requests per HTTP status; "error (why)" for those without an answer
    answers: dict[str, int] = field(default_factory=dict)


def build_loadgen(cache: Path) -> Path:
    """Compile bench/loadgen (Go standard library only) once into the cache."""
    if shutil.which("go") is None:
        raise SystemExit("bench/ingest needs Go to build bench/loadgen")
    binary = cache / "loadgen"
    source = LOADGEN_SOURCE / "main.go"
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(["go", "build", "-o", str(binary), "."], cwd=LOADGEN_SOURCE, check=True)  # noqa: S607
    return binary


def load(
    loadgen: Path, url: str, key: str, body: Path, seconds: int, connections: int, rate: float = 0
) -> Load:
    argv = [
        str(loadgen),
        "-url",
        url,
        "-key",
        key,
        "-body",
        str(body),
        "-c",
        str(connections),
        "-d",
        f"{seconds}s",
    ]
    if rate:
        argv += ["-rate", f"{rate:.1f}"]
    out = json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)
    non_202 = out["errors"] + sum(n for code, n in out["statuses"].items() if code != "202")
    answers = {str(code): n for code, n in out["statuses"].items()} | {
        f"error ({kind})": n for kind, n in out["error_kinds"].items()
    }
    return Load(out["per_second"], out["p50_ms"], out["p99_ms"], non_202, answers)


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
    parser.add_argument("--seconds", type=int, default=8, help="length of each load run")
    parser.add_argument("--rounds", type=int, default=5, help="alternating full-load rounds per body shape")
    args = parser.parse_args()
    settings = RunnerSettings()
    loadgen = build_loadgen(settings.kafka_cache_dir.parent / "loadgen")

    with bench_kafka("ingest") as bench:
        return run(bench, loadgen, args.seconds, args.rounds)


def run(bench: Bench, loadgen: Path, seconds: int, rounds: int) -> int:
    work = bench.work
    key = KeyStore(work / "write-keys.json").create("bench")
    batch_body, single_body = work / "batch.json", work / "single.json"
    batch_body.write_text(json.dumps({"events": [event(i) for i in range(50)]}))
    single_body.write_text(json.dumps(event(0) | {"event_id": None}))

    servers: dict[str, tuple[str, subprocess.Popen[bytes]]] = {}
    env = os.environ | {
        "COSNAP_DATA_DIR": str(work),
        "COSNAP_KAFKA_BOOTSTRAP": bench.bootstrap,
        "COSNAP_TOPIC_PREFIX": bench.topics.prefix,
        "COSNAP_RATE_LIMIT_EVENTS_PER_S": "0",
        "COSNAP_LOG_LEVEL": "WARNING",
    }
    progress = bench.progress
    try:
        progress.note("starting the ingest API twice: producing (acks=all) and validate-only")
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
        print(f"ingest benchmark: {rounds} alternating rounds of {seconds} s, {CONNECTIONS} conns")
        for shape, body, per in [("50-event batches", batch_body, 50), ("single events", single_body, 1)]:
            rates: dict[str, list[float]] = {name: [] for name in servers}
            ratios = []
            for url, _ in servers.values():
                load(loadgen, f"{url}/v1/events", key, body, 2, CONNECTIONS)  # warm-up
            for round_ in range(1, rounds + 1):
                for name, (url, _) in servers.items():
                    progress.note(f"{shape}: round {round_}/{rounds}, {name}, {seconds} s at full load")
                    run = load(loadgen, f"{url}/v1/events", key, body, seconds, CONNECTIONS)
                    assert run.non_202 == 0, f"{name}: {run.non_202} requests without a 202"
                    rates[name].append(run.requests_per_s)
                ratios.append(rates["producing"][-1] / rates["validate-only"][-1])
                print(
                    f"  {shape:17s} validate-only {rates['validate-only'][-1] * per:7.0f} ev/s   "
                    f"producing {rates['producing'][-1] * per:7.0f} ev/s   ratio {ratios[-1]:.2f}",
                    flush=True,
                )
            ratio = statistics.median(ratios)
            full = statistics.median(rates["producing"])
            # Tail latency on a shared machine swings from run to run: median of three runs.
            progress.note(f"{shape}: three {seconds} s runs of the producing server at half load")
            halves = [
                load(
                    loadgen, f"{servers['producing'][0]}/v1/events", key, body, seconds, CONNECTIONS, full / 2
                )
                for _ in range(3)
            ]
            half = sorted(halves, key=lambda h: h.p99_ms)[1]
            print(
                f"  {shape:17s} median ratio {ratio:.2f}; "
                f"open-loop at half load ({half.requests_per_s:.0f} req/s): "
                f"p50 {half.p50_ms:.1f} ms, p99 {half.p99_ms:.1f} ms",
                flush=True,
            )
            rows.append((shape, statistics.median(rates["validate-only"]) * per, full * per, ratio, half))

        print("\n| body | validate-only ev/s | producing ev/s | ratio (median) | half load: p50 / p99 |")
        print("|---|---|---|---|---|")
        for shape, baseline, producing, ratio, half in rows:
            print(
                f"| {shape} | {baseline:,.0f} | {producing:,.0f} | {ratio:.2f} | "
                f"{half.p50_ms:.1f} / {half.p99_ms:.1f} ms |"
            )
        print(f"\nmeasured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores")
        return 0 if all(ratio >= 0.8 and half.p99_ms < 50 for *_, ratio, half in rows) else 1
    finally:
        for _, process in servers.values():
            stop(process, 20)


if __name__ == "__main__":
    sys.exit(main())
