"""`cosnap-metrics run`: the whole embedded pipeline from one command.

Fetches and starts Apache Kafka, creates the topics, starts the sink (which owns chDB and
serves reads), the Faust worker and the ingest API, prints where to reach them, and on Ctrl-C
or SIGTERM stops every process it started, newest first, the broker last.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from types import FrameType

import httpx

from cosnap_metrics.broker import BrokerConfig, KafkaBroker, fetch_kafka
from cosnap_metrics.errors import RunnerError
from cosnap_metrics.processes import spawn, stop
from cosnap_metrics.provision import ensure_topics
from plumbing.keys import DEV_KEY_FILE, DEV_READ_KEY_FILE, KeyStore, ensure_dev_key, ensure_dev_read_key
from schemas.settings import RunnerSettings

SERVICES = ("sink", "streams", "ingest")  # start order; stopped in reverse
EXAMPLE_QUERY = "SELECT type, count() FROM metrics.events GROUP BY type"


def _port(bootstrap: str) -> int:
    return int(bootstrap.rsplit(":", 1)[1])


def wait_http(url: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    """Block until `url` answers 200; RunnerError if `process` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RunnerError(f"{url} never came up: its process exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RunnerError(f"{url} did not answer within {timeout:.0f}s")


def services(settings: RunnerSettings) -> tuple[str, ...]:
    """The services to start, in order: the notifier only when alerts go beyond the topic."""
    return SERVICES + (("notify",) if settings.notify_enabled else ())


def child_environment(settings: RunnerSettings) -> dict[str, str]:
    """The environment every service process gets: the runner's, with resolved locations."""
    return os.environ | {
        "COSNAP_DATA_DIR": str(settings.data_dir.resolve()),
        "COSNAP_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "COSNAP_TOPIC_PREFIX": settings.topic_prefix,
        "PYTHONUNBUFFERED": "1",
    }


def run_pipeline(settings: RunnerSettings) -> int:
    """Blocks until Ctrl-C/SIGTERM or until a service dies; returns the exit status."""
    stopping = threading.Event()

    def _on_signal(_signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)

    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    libs = fetch_kafka(settings.kafka_version, settings.kafka_cache_dir)
    broker = KafkaBroker(
        BrokerConfig(
            libs, data_dir / "kafka", _port(settings.kafka_bootstrap), settings.kafka_controller_port
        )
    )
    children: dict[str, subprocess.Popen[bytes]] = {}
    try:
        print(f"[kafka] starting Apache Kafka {settings.kafka_version} on {broker.bootstrap}", flush=True)
        broker.start()
        created = ensure_topics(broker.bootstrap, settings.topics)
        print(f"[kafka] ready; topics created: {', '.join(created) or 'none (all present)'}", flush=True)
        keys = KeyStore(settings.keys_file)
        write_key = ensure_dev_key(keys, data_dir)
        read_key = ensure_dev_read_key(keys, data_dir)

        env = child_environment(settings)
        for name in services(settings):
            children[name] = spawn([sys.executable, "-m", "cosnap_metrics.cli", name], env=env)
        wait_http(f"{settings.query_url}/health", children["sink"], 120)
        ingest = f"http://{settings.ingest_host}:{settings.ingest_port}"
        wait_http(f"{ingest}/health/ready", children["ingest"], 120)
        print(
            "\n"
            f"  Cosnap Metrics is running (data in {data_dir})\n"
            f"  ingest API   {ingest}/v1/events\n"
            f"  API docs     {ingest}/docs\n"
            f"  dashboard    {settings.query_url}/dashboard\n"
            f"  health       {ingest}/health/detailed\n"
            f"  metrics      {ingest}/metrics, {settings.query_url}/metrics, streams and notifier on "
            f":{settings.streams_metrics_port} and :{settings.notify_metrics_port}\n"
            f"  write key    {write_key}   (also in {data_dir / DEV_KEY_FILE})\n"
            f"  ClickHouse   {settings.clickhouse_http_url or 'off'}   user default, password the read key\n"
            f"  read key     {read_key}   (also in {data_dir / DEV_READ_KEY_FILE})\n"
            f"  query        .venv/bin/cosnap-metrics query '{EXAMPLE_QUERY}'\n"
            f"  demo traffic .venv/bin/cosnap-metrics demo --minutes 5 --rate 200\n"
            f"  alerts       .venv/bin/cosnap-metrics alerts tail\n"
            "  Ctrl-C stops everything.\n",
            flush=True,
        )
        while not stopping.wait(0.5):
            for name, process in children.items():
                if process.poll() is not None:
                    print(
                        f"[run] {name} exited with {process.returncode}; stopping",
                        file=sys.stderr,
                        flush=True,
                    )
                    return 1
        return 0
    except RunnerError as exc:
        print(f"[run] {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        print("[run] stopping", flush=True)
        for name in reversed(services(settings)):
            if name in children:
                stop(children[name], timeout=30)
        broker.stop()
        print("[run] stopped", flush=True)
