"""Shared fixtures: one real Apache Kafka broker per test session, and the pipeline's services
started as real processes, each test with its own topics, data directory and ports."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import Popen
from typing import Any

import httpx
import orjson
import pytest
from kafka import KafkaConsumer

from cosnap_metrics.broker import BrokerConfig, KafkaBroker, KafkaCluster, fetch_kafka
from cosnap_metrics.broker import free_port as free_port  # the tests' and the benchmarks' too
from cosnap_metrics.errors import RunnerError
from cosnap_metrics.processes import spawn, stop
from cosnap_metrics.provision import ensure_topics
from cosnap_metrics.supervisor import wait_http
from plumbing.keys import KeyStore
from schemas.settings import RunnerSettings
from schemas.topics import Topics


def pytest_sessionstart(session: pytest.Session) -> None:
    """The streams modules compiled by `make native` shadow their sources: refuse to test an
    extension built before its source last changed."""
    for library in (Path(__file__).resolve().parents[1] / "streams").glob("*.so"):
        source = library.with_name(library.name.split(".")[0] + ".py")
        if source.exists() and source.stat().st_mtime > library.stat().st_mtime:
            pytest.exit(f"streams/{library.name} is older than its source: run `make native`", returncode=2)


# Seconds each test file took in a whole run (`make test-durations` writes it): xdist hands out
# whole files in collection order, so the suite sorts the longest first and the short ones fill
# the gaps at the end. A file not in it (a new one) counts as the longest.
DURATIONS = Path(__file__).with_name("durations.json")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--store-durations", action="store_true", help=f"write each test file's seconds to {DURATIONS.name}"
    )


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test that needs a broker is marked `kafka` (so `make check` can leave it out), and
    the files are ordered longest first by DURATIONS, then end-to-end files before those on the
    broker before the rest (each file's tests in their order)."""
    seconds: dict[str, float] = orjson.loads(DURATIONS.read_bytes()) if DURATIONS.exists() else {}
    rank: dict[Path, tuple[float, int]] = {}
    for item in items:
        if "kafka_libs" in getattr(item, "fixturenames", ()):  # a broker, the session's or its own
            item.add_marker(pytest.mark.kafka)
        kind = 0 if item.get_closest_marker("e2e") else 1 if item.get_closest_marker("kafka") else 2
        known = seconds.get(item.path.relative_to(config.rootpath).as_posix(), float("inf"))
        rank[item.path] = min(rank.get(item.path, (-known, kind)), (-known, kind))
    items.sort(key=lambda item: rank[item.path])


class _FileDurations:
    """With --store-durations: each test's setup, call and teardown counted to its file (in the
    xdist controller, which gets every worker's reports), written to DURATIONS at the end."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        path = report.nodeid.split("::")[0]
        self.seconds[path] = self.seconds.get(path, 0.0) + report.duration

    def pytest_sessionfinish(self) -> None:
        ordered = sorted(((path, round(s, 1)) for path, s in self.seconds.items()), key=lambda kv: -kv[1])
        DURATIONS.write_bytes(orjson.dumps(dict(ordered), option=orjson.OPT_INDENT_2) + b"\n")


def wait_for(check: Callable[[], Any], timeout: float, interval: float = 0.25) -> Any:
    """Call `check` until it returns something truthy or `timeout` seconds pass; return its last result."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(interval)


def _fetch_kafka_libs() -> Path:
    settings = RunnerSettings()
    return fetch_kafka(settings.kafka_version, settings.kafka_cache_dir)


@pytest.fixture(scope="session")
def kafka_libs() -> Path:
    """The broker's jars, fetched from Maven Central into the shared cache on first use."""
    return _fetch_kafka_libs()


def new_broker(libs: Path, data_dir: Path) -> KafkaBroker:
    """A broker on free loopback ports with the JVM flags `run` gives its own."""
    flags = RunnerSettings().jvm_flags
    return KafkaBroker(BrokerConfig(libs, data_dir, free_port(), free_port(), jvm_flags=flags))


# With pytest-xdist (`make test` runs `-n`), the controller starts the session's broker before
# it spawns its workers and hands them its address through this variable: one broker serves all
# workers (each test has topics of its own), and it is stopped once, after the last worker ended.
SHARED_BROKER = "COSNAP_TEST_SHARED_BROKER"
_STARTED_BROKER = pytest.StashKey[KafkaBroker]()


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("store_durations") and not hasattr(config, "workerinput"):
        config.pluginmanager.register(_FileDurations(), "file-durations")
    distributed = not hasattr(config, "workerinput") and (config.getoption("numprocesses", None) or 0) > 0
    without_broker = "not kafka" in (config.getoption("markexpr", "") or "")  # make check
    if distributed and not without_broker and SHARED_BROKER not in os.environ:
        data_dir = Path(tempfile.mkdtemp(prefix="kafka-"))
        broker = new_broker(_fetch_kafka_libs(), data_dir)
        broker.start()
        config.stash[_STARTED_BROKER] = broker
        cfg = broker.config
        os.environ[SHARED_BROKER] = f"{cfg.data_dir}:{cfg.port}:{cfg.controller_port}"


def pytest_unconfigure(config: pytest.Config) -> None:
    broker = config.stash.get(_STARTED_BROKER, None)
    if broker is not None:
        broker.stop()
        shutil.rmtree(broker.config.data_dir, ignore_errors=True)
        del os.environ[SHARED_BROKER]


@pytest.fixture(scope="session")
def kafka(kafka_libs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """A real single-node Apache Kafka (KRaft) on free loopback ports, for the whole session: the
    xdist controller's when it started one, else one of this process's own."""
    shared = os.environ.get(SHARED_BROKER)
    if shared:
        data_dir, port, controller_port = shared.rsplit(":", 2)
        yield KafkaBroker(BrokerConfig(kafka_libs, Path(data_dir), int(port), int(controller_port)))
        return
    broker = new_broker(kafka_libs, tmp_path_factory.mktemp("kafka"))
    broker.start()
    yield broker
    broker.stop()


@dataclass
class Pipeline:
    """The services of one test: their environment, processes and addresses."""

    env: dict[str, str]
    data_dir: Path
    topics: Topics
    ingest_url: str
    query_url: str
    write_key: str
    logs: Path
    processes: dict[str, Popen[bytes]] = field(default_factory=dict)
    status_urls: dict[str, str] = field(default_factory=dict)

    def start(self, *services: str) -> None:
        """Start services by CLI command; `streams#2` starts a second `streams` process (with
        status ports of its own)."""
        for name in services:
            command, _, instance = name.partition("#")
            env = self.env
            if instance:
                env = env | {k: str(free_port()) for k in env if k.endswith("_METRICS_PORT")}
            self.status_urls[name] = self._status_url(command, env)
            with (self.logs / f"{name}.log").open("ab") as out:
                self.processes[name] = spawn(
                    [sys.executable, "-m", "cosnap_metrics.cli", command], env=env, stdout=out
                )
        if "sink" in services:
            self.wait_http(f"{self.query_url}/health", "sink")
        if "ingest" in services:
            self.wait_http(f"{self.ingest_url}/health/ready", "ingest")

    def _status_url(self, command: str, env: dict[str, str]) -> str:
        """Where the service serves /metrics (and /health, except the ingest: /health/ready)."""
        if command == "ingest":
            return self.ingest_url
        if command == "sink":
            return self.query_url
        return f"http://127.0.0.1:{env[f'COSNAP_{command.upper()}_METRICS_PORT']}"

    def wait_http(self, url: str, name: str, timeout: float = 90) -> None:
        try:
            wait_http(url, self.processes[name], timeout)
        except RunnerError as exc:
            raise AssertionError(f"{exc}\n{self.log(name)}") from exc

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self, *services: str, timeout: float = 30) -> None:
        for name in services or tuple(reversed(self.processes)):
            process = self.processes.pop(name, None)
            if process is not None:
                stop(process, timeout)

    def post(self, events: list[dict[str, Any]], batch: int = 50) -> None:
        """Post `events` in batches with the test's write key; every one must be accepted."""
        with httpx.Client(
            base_url=self.ingest_url, headers={"Authorization": f"Bearer {self.write_key}"}
        ) as client:
            for start in range(0, len(events), batch):
                response = client.post("/v1/events", json={"events": events[start : start + batch]})
                assert response.status_code == 202, response.text
                assert response.json()["rejected"] == []

    def query(self, sql: str) -> list[list[object]]:
        token = (self.data_dir / "query-token").read_text().strip()
        response = httpx.post(
            f"{self.query_url}/v1/query",
            json={"sql": sql},
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        rows: list[list[object]] = response.json()["rows"]
        return rows


class AlertListener:
    """Every record of an alerts topic, with the wall time it arrived, from a background thread."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.records: list[tuple[float, dict[str, Any]]] = []
        self._stop = threading.Event()
        self._consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for records in self._consumer.poll(timeout_ms=10).values():
                arrived = time.time()
                self.records.extend((arrived, orjson.loads(r.value)) for r in records)

    def states(self) -> list[str]:
        return [record["state"] for _, record in self.records]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._consumer.close()


@pytest.fixture
def own_kafka(kafka_libs: Path, tmp_path: Path) -> Iterator[KafkaBroker]:
    """A broker of the test's own, for tests that stop and restart it."""
    broker = new_broker(kafka_libs, tmp_path / "own-kafka")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def kafka_cluster(kafka_libs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """A cluster of three KRaft nodes of the test file's own (topics with 3 replicas,
    min.insync.replicas 2), for tests that kill, stop and restart its nodes one by one
    (`nodes[i]`, `restart([...])`). A test that takes nodes down starts them again before it ends."""
    data_dir = tmp_path_factory.mktemp("kafka-cluster")
    flags = RunnerSettings().jvm_flags
    cluster = KafkaCluster.on_loopback(kafka_libs, data_dir, 3, free_port(), free_port(), jvm_flags=flags)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def pipeline(kafka: KafkaBroker, tmp_path: Path) -> Iterator[Pipeline]:
    """Environment for the pipeline's processes on their own topics, ports and chDB directory.
    Nothing is started; the test starts the services it needs."""
    running = make_pipeline(kafka, tmp_path)
    yield running
    running.stop()


@pytest.fixture
def pipeline_on_own_kafka(own_kafka: KafkaBroker, tmp_path: Path) -> Iterator[Pipeline]:
    """Like `pipeline`, on the test's own broker (`own_kafka`), which the test may stop."""
    running = make_pipeline(own_kafka, tmp_path)
    yield running
    running.stop()


def make_pipeline(kafka: KafkaBroker | KafkaCluster, tmp_path: Path) -> Pipeline:
    """The pipeline's environment on `kafka` (a node, or a cluster: then its topics have the
    cluster's replicas, and the services' own topics too)."""
    replication = kafka.replication if isinstance(kafka, KafkaCluster) else 1
    topics = Topics(f"t{uuid.uuid4().hex[:10]}.")
    ensure_topics(kafka.bootstrap, topics, replication)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    logs = tmp_path / "logs"
    logs.mkdir()
    ingest_port, query_port = free_port(), free_port()
    env = os.environ | {
        "COSNAP_DATA_DIR": str(data_dir),
        "COSNAP_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "COSNAP_KAFKA_REPLICATION": str(replication),
        "COSNAP_TOPIC_PREFIX": topics.prefix,
        "COSNAP_INGEST_PORT": str(ingest_port),
        "COSNAP_QUERY_URL": f"http://127.0.0.1:{query_port}",
        "COSNAP_CLICKHOUSE_HTTP_URL": f"http://127.0.0.1:{free_port()}",
        "COSNAP_STREAMS_METRICS_PORT": str(free_port()),
        "COSNAP_NOTIFY_METRICS_PORT": str(free_port()),
        "COSNAP_SINK_METRICS_PORT": str(free_port()),
        "COSNAP_WINDOW_LATENESS_S": "0",
        "COSNAP_WINDOW_GRACE_S": "1",
        "COSNAP_WATERMARK_IDLE_S": "1",
        "COSNAP_SINK_FLUSH_MS": "200",
        "PYTHONUNBUFFERED": "1",
    }
    write_key = KeyStore(data_dir / "write-keys.json").create("cosnap-test")
    return Pipeline(
        env=env,
        data_dir=data_dir,
        topics=topics,
        ingest_url=f"http://127.0.0.1:{ingest_port}",
        query_url=f"http://127.0.0.1:{query_port}",
        write_key=write_key,
        logs=logs,
    )
