"""`cosnap-metrics run`: the whole embedded pipeline from one command, supervised.

Fetches and starts Apache Kafka (one node, or with `--brokers 3` a cluster of three on
loopback), creates the topics, starts the sink (which owns chDB and
serves reads), the Faust worker, the ingest API and, when alerts go beyond the topic, the
notifier, and prints where to reach them. Then it watches every process it started:

- a process that exits is noticed at once (SIGCHLD), reaped, named in one console line and
  started again after a backoff (`RESTART_BACKOFF`): a Kafka node on the same data directory and
  ports (the nodes that are down together come back together: a node serves only with a majority
  of the quorum running), a service only while a majority of the nodes is up (a service that
  died with the broker comes back after it). A process that exits `MAX_FAILURES` times within
  `FAILURE_WINDOW_S` stops the whole run, with the reason and exit status 1;
- the services log to `<data dir>/logs/<service>.jsonl`; the console gets their warnings and
  state changes only (plumbing/logs.py), and after the banner a line when a service's health
  changes and a status line every few seconds (cosnap_metrics/console.py). With
  `--log-format json` the console gets every line of every service as JSON instead, and no
  status line;
- the runner's own `/metrics` and `/health` (`COSNAP_RUN_METRICS_PORT`) count the restarts.

Ctrl-C or SIGTERM stops everything within `STOP_S`: the services first, together (each flushes
under its own deadline, plumbing/stopping.py, and is killed if still there after
`STOP_SERVICES_S`), then the broker. The exit status is 0 when every service wrote out what it
held, 1 when one could not (the last lines say which, and what). A second Ctrl-C kills every
process at once (exit status 130).
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import select
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import httpx
from prometheus_client import Counter, Gauge
from pydantic import SecretStr

from cosnap_metrics.broker import BrokerConfig, KafkaBroker, KafkaCluster, fetch_kafka
from cosnap_metrics.console import Console, Endpoints
from cosnap_metrics.errors import RunnerError
from cosnap_metrics.processes import describe_exit, signal_group, spawn
from cosnap_metrics.provision import ensure_topics
from cosnap_metrics.validate import DEFAULT_LISTEN, SECRET_FILE
from plumbing.backoff import Backoff
from plumbing.keys import DEV_KEY_FILE, DEV_READ_KEY_FILE, KeyStore, ensure_dev_key, ensure_dev_read_key
from plumbing.private_files import create_private
from plumbing.status import serve_status
from plumbing.stopping import EXIT_SECOND_SIGNAL, EXIT_UNFLUSHED
from plumbing.webhooks import SECRET_PREFIX
from schemas.health import ServiceHealth
from schemas.settings import RunnerSettings
from schemas.topics import min_insync_replicas

SERVICES = ("sink", "streams", "ingest")  # start order
EXAMPLE_QUERY = "SELECT type, count() FROM metrics.events GROUP BY type"
BROKER = "kafka"  # the child's name of a single node; a cluster's are kafka-1, kafka-2, ...
CLUSTER_DIR = "kafka-cluster"  # under the data directory, one `node-<id>` directory per node

RESTART_BACKOFF = Backoff(initial=1.0, cap=20.0)  # waits 0.5-1, 1-2, 2-4, 4-8 s, ... before a restart
MAX_FAILURES = 5  # exits of one process within FAILURE_WINDOW_S that stop the run
FAILURE_WINDOW_S = 300.0
READY_WITHIN_S = 180.0  # from start to the banner
STOP_SERVICES_S = 7.0  # the services' own deadline is 6 s (plumbing/stopping.py); then SIGKILL
STOP_S = 10.0  # the broker stops in what is left, at least BROKER_STOP_MIN_S
BROKER_STOP_MIN_S = 3.0
CHECK_EVERY_S = 0.5  # the loop's pace when no signal wakes it

RESTARTS = Counter(
    "cosnap_run_restarts_total", "Processes the runner started again after they exited", ["process"]
)
UP = Gauge(
    "cosnap_run_process_up",
    "1 while the runner's process runs, 0 while it waits to be restarted",
    ["process"],
)


def _port(bootstrap: str) -> int:
    return int(bootstrap.rsplit(":", 1)[1])


def _say(line: str) -> None:
    print(f"[run] {line}", flush=True)


def wait_http(url: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    """Block until `url` answers 200; RunnerError if `process` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RunnerError(f"{url} never came up: its process exited with {process.returncode}")
        if _answers(url):
            return
        time.sleep(0.3)
    raise RunnerError(f"{url} did not answer within {timeout:.0f}s")


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def services(settings: RunnerSettings) -> tuple[str, ...]:
    """The services to start, in order: the notifier only when alerts go beyond the topic."""
    return SERVICES + (("notify",) if settings.notify_enabled else ())


def _status_host(settings: RunnerSettings) -> str:
    """Where this machine reaches the status ports: loopback when they listen on every interface."""
    return "127.0.0.1" if settings.metrics_host in ("", "0.0.0.0", "::") else settings.metrics_host  # noqa: S104


def _supervisor_url(settings: RunnerSettings) -> str:
    """Where the services reach the runner's /health (the ingest shows it in /health/detailed)."""
    if not settings.run_metrics_port:
        return ""
    return f"http://{_status_host(settings)}:{settings.run_metrics_port}/health"


def endpoints(settings: RunnerSettings) -> dict[str, Endpoints]:
    """The health and metrics endpoints of every service the runner starts (a status port of 0
    is off: that service is left out)."""
    ingest = f"http://{settings.ingest_host}:{settings.ingest_port}"
    found = {
        "sink": Endpoints(f"{settings.query_url}/health", f"{settings.query_url}/metrics"),
        "ingest": Endpoints(f"{ingest}/health/ready", f"{ingest}/metrics"),
    }
    for name, port in (("streams", settings.streams_metrics_port), ("notify", settings.notify_metrics_port)):
        if port and name in services(settings):
            status = f"http://{_status_host(settings)}:{port}"
            found[name] = Endpoints(f"{status}/health", f"{status}/metrics")
    return found


def child_environment(settings: RunnerSettings) -> dict[str, str]:
    """The environment every service process gets: the runner's, with resolved locations."""
    return os.environ | {
        "COSNAP_DATA_DIR": str(settings.data_dir.resolve()),
        "COSNAP_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "COSNAP_KAFKA_REPLICATION": str(settings.kafka_replication),
        "COSNAP_TOPIC_PREFIX": settings.topic_prefix,
        "COSNAP_SUPERVISOR_URL": _supervisor_url(settings),
        "PYTHONUNBUFFERED": "1",
    }


@dataclass
class Child:
    """One supervised process: running (`process`), or waiting until `restart_at`."""

    name: str
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    failures: deque[float] = field(default_factory=deque)  # monotonic times of its exits in the window
    restart_at: float | None = None
    last_exit: str | None = None

    def failed(self, how: str) -> float:
        """Record an exit; the wait before the restart. RunnerError when over the budget."""
        now = time.monotonic()
        self.process, self.last_exit = None, how
        self.failures.append(now)
        while self.failures[0] < now - FAILURE_WINDOW_S:
            self.failures.popleft()
        if len(self.failures) >= MAX_FAILURES:
            raise RunnerError(
                f"{self.name} exited {len(self.failures)} times within {FAILURE_WINDOW_S / 60:.0f} minutes "
                f"(last: {how}); stopping"
            )
        delay = RESTART_BACKOFF.delay(len(self.failures))
        self.restart_at = now + delay
        UP.labels(self.name).set(0)
        return delay


class Signals:
    """SIGINT and SIGTERM: the first asks to stop, the second kills every process at once
    (`kill_all`). Any signal, SIGCHLD included, ends `wait()` at once, so an exit is noticed as
    it happens. The handlers only set flags and send signals: a handler runs on the main thread
    between two of its bytecodes, where taking a lock the loop may hold (an Event's) deadlocks."""

    def __init__(self, kill_all: Callable[[], None]) -> None:
        self.stopping = False
        self.killed = False
        self._kill_all = kill_all
        self._wakeup, self._writer = socket.socketpair()
        for end in (self._wakeup, self._writer):
            end.setblocking(False)
        signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)  # handled, so it wakes `wait`

    def _stop(self, _signum: int, _frame: FrameType | None) -> None:
        if self.stopping and not self.killed:
            self.killed = True
            self._kill_all()
        self.stopping = True

    def wait(self, timeout: float) -> None:
        """Sleep until a signal arrives or `timeout` seconds pass."""
        select.select([self._wakeup], [], [], timeout)
        with contextlib.suppress(BlockingIOError):
            while self._wakeup.recv(512):
                pass


def node_names(kafka: KafkaCluster) -> dict[str, KafkaBroker]:
    """The runner's name of each Kafka node: `kafka` alone, `kafka-<node id>` in a cluster."""
    if len(kafka.nodes) == 1:
        return {BROKER: kafka.nodes[0]}
    return {f"{BROKER}-{node.config.node_id}": node for node in kafka.nodes}


class Supervisor:
    """The Kafka nodes and the services of one run, started and restarted; `stop()` ends them."""

    def __init__(
        self,
        settings: RunnerSettings,
        kafka: KafkaCluster,
        env: dict[str, str],
        log_format: str | None = None,
    ) -> None:
        self._settings = settings
        self._kafka = kafka
        self._nodes = node_names(kafka)
        self._env = env
        self._log_args = ["--log-format", log_format] if log_format else []
        self._names = services(settings)
        self.children = {name: Child(name) for name in (*self._nodes, *self._names)}
        self.signals = Signals(self.kill_all)
        self._health = ServiceHealth(service="run", status="unhealthy", problems=["starting"])

    def health(self) -> ServiceHealth:
        """The runner's /health (any thread): degraded while a process waits to be restarted."""
        return self._health

    def _publish(self) -> None:
        problems = [
            f"{child.name} is down ({child.last_exit}); restart {child.restarts + 1} pending"
            for child in self.children.values()
            if child.process is None
        ]
        details = {
            child.name: {
                "pid": child.process.pid if child.process else None,
                "restarts": child.restarts,
                "last_exit": child.last_exit,
            }
            for child in self.children.values()
        }
        self._health = ServiceHealth(
            service="run", status="degraded" if problems else "healthy", problems=problems, details=details
        )

    def start_kafka(self) -> None:
        """Start every Kafka node and wait until each answers; RunnerError if one does not."""
        self._kafka.start(cancelled=lambda: self.signals.stopping)
        self._running(list(self._nodes))

    def _running(self, names: list[str]) -> None:
        for name in names:
            self.children[name].process = self._nodes[name].process
            UP.labels(name).set(1)

    def kafka_up(self) -> bool:
        """Whether a majority of the nodes runs: the cluster's quorum, and the replicas that
        min.insync.replicas asks for."""
        running = sum(self.children[name].process is not None for name in self._nodes)
        return running > len(self._nodes) // 2

    def kafka_state(self) -> str:
        """The nodes as the console shows them: `3 of 3 nodes up`, `2 of 3 nodes up; kafka-2 is
        down (killed by SIGKILL)`."""
        down = [child for name in self._nodes if (child := self.children[name]).process is None]
        state = f"{len(self._nodes) - len(down)} of {len(self._nodes)} nodes up"
        return "; ".join([state, *(f"{child.name} is down ({child.last_exit})" for child in down)])

    def start_service(self, name: str) -> None:
        self.children[name].process = spawn(
            [sys.executable, "-m", "cosnap_metrics.cli", name, *self._log_args], env=self._env
        )
        UP.labels(name).set(1)

    def start_services(self) -> None:
        for name in self._names:
            self.start_service(name)
        self._publish()

    def supervise(self, on_ready: Callable[[], None]) -> None:
        """Watch and restart until a stop is asked (returns) or a process fails too often
        (RunnerError). `on_ready` runs once, when the ingest and the sink first answer."""
        started = time.monotonic()
        ready = False
        while not self.signals.stopping:
            self.signals.wait(CHECK_EVERY_S)
            self._reap()
            self._restart_due()
            if not ready and self.kafka_up():
                ready = self._ready()
                if ready:
                    on_ready()
                elif time.monotonic() - started > READY_WITHIN_S:
                    raise RunnerError(f"the pipeline was not ready within {READY_WITHIN_S:.0f} s")

    def _ready(self) -> bool:
        settings = self._settings
        ingest = f"http://{settings.ingest_host}:{settings.ingest_port}"
        return _answers(f"{settings.query_url}/health") and _answers(f"{ingest}/health/ready")

    def _reap(self) -> None:
        for child in self.children.values():
            if child.process is None or child.process.poll() is None:
                continue
            how = describe_exit(child.process.returncode)
            delay = child.failed(how)
            after = " once Kafka is back" if child.name not in self._nodes and not self.kafka_up() else ""
            _say(f"{child.name} exited ({how}); restarting in {delay:.1f} s{after}")
            self._publish()

    def _restart_due(self) -> None:
        now = time.monotonic()
        down = [child for name in self._nodes if (child := self.children[name]).process is None]
        if any(child.restart_at is not None and now >= child.restart_at for child in down):
            self._restart_nodes(down)
        if not self.kafka_up():
            return  # the services come back after the broker
        for name in self._names:
            child = self.children[name]
            if child.process is None and child.restart_at is not None and now >= child.restart_at:
                child.restarts += 1
                RESTARTS.labels(name).inc()
                self.start_service(name)
                _say(f"{name} started again (restart {child.restarts})")
                self._publish()

    def _restart_nodes(self, down: list[Child]) -> None:
        """Start the nodes that are down again, together, and wait until each answers."""
        for child in down:
            child.restarts += 1
            RESTARTS.labels(child.name).inc()
            node = self._nodes[child.name]
            _say(f"starting {_label(child.name)} again on {node.bootstrap} (restart {child.restarts})")
        began = time.monotonic()
        try:
            nodes = [self._nodes[child.name] for child in down]
            self._kafka.restart(nodes, cancelled=lambda: self.signals.stopping)
        except RunnerError as exc:
            if self.signals.stopping:
                return
            for child in down:
                delay = child.failed(str(exc))
                _say(f"{_label(child.name)} did not start: {exc}; trying again in {delay:.1f} s")
        else:
            self._running([child.name for child in down])
            for child in down:
                _say(f"{_label(child.name)} ready again, {time.monotonic() - began:.1f} s after its start")
        self._publish()

    def kill_all(self) -> None:
        """SIGKILL every process now (a second Ctrl-C); `stop()` then reaps them."""
        processes = [child.process for child in self.children.values()]
        processes += [node.process for node in self._kafka.nodes]
        for process in processes:  # a node's is there while it starts, before it is a child's
            if process is not None:
                signal_group(process, signal.SIGKILL)

    def stop(self) -> list[str]:
        """Stop the services together, then the Kafka nodes, within STOP_S; what was not written
        out, one entry per service that could not (empty: a clean stop)."""
        began = time.monotonic()
        running = {n: c.process for n in self._names if (c := self.children[n]).process is not None}
        for process in running.values():
            signal_group(process, signal.SIGTERM)
        unclean = []
        for name, process in running.items():
            try:
                code = process.wait(max(began + STOP_SERVICES_S - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                signal_group(process, signal.SIGKILL)
                code = process.wait()
                unclean.append(f"{name} did not stop within {STOP_SERVICES_S:.0f} s and was killed")
                continue
            if code == EXIT_UNFLUSHED:
                unclean.append(f"{name} could not write out all it held (its last line says what)")
            elif code != 0:
                unclean.append(f"{name} ended with {describe_exit(code)}")
        self._kafka.stop(timeout=max(began + STOP_S - time.monotonic(), BROKER_STOP_MIN_S))
        for child in self.children.values():
            child.process = None
        return unclean


def with_validation_receiver(
    settings: RunnerSettings, data_dir: Path
) -> tuple[RunnerSettings, dict[str, str]]:
    """The settings with the notifier sending the validation rule's alerts to `cosnap-metrics
    validate`'s default receiver (unless COSNAP_VALIDATE_WEBHOOK_URL names another), signed with
    COSNAP_WEBHOOK_SECRET or, without one, a secret kept in `<data dir>/validate-webhook-secret`;
    and the environment the services need for it."""
    url = settings.validate_webhook_url or f"http://{DEFAULT_LISTEN}/"
    secret = settings.webhook_secret.get_secret_value()
    if not secret:
        path = data_dir / SECRET_FILE
        if not path.exists():
            create_private(path, f"{SECRET_PREFIX}{base64.b64encode(secrets.token_bytes(32)).decode()}\n")
        secret = path.read_text().strip()
    updated = settings.model_copy(update={"validate_webhook_url": url, "webhook_secret": SecretStr(secret)})
    return updated, {"COSNAP_VALIDATE_WEBHOOK_URL": url, "COSNAP_WEBHOOK_SECRET": secret}


def _label(name: str) -> str:
    """How the console names a node: `Kafka` when it is the only one, else `kafka-2`."""
    return "Kafka" if name == BROKER else name


def kafka_of_run(settings: RunnerSettings, libs: Path, data_dir: Path) -> KafkaCluster:
    """The Kafka of a run: one node in `<data dir>/kafka`, or `settings.brokers` nodes under
    `<data dir>/kafka-cluster`; node 1 on the port of COSNAP_KAFKA_BOOTSTRAP (its first address)
    and COSNAP_KAFKA_CONTROLLER_PORT."""
    port = _port(settings.kafka_bootstrap.split(",")[0])
    if settings.brokers == 1:
        config = BrokerConfig(
            libs, data_dir / "kafka", port, settings.kafka_controller_port, jvm_flags=settings.jvm_flags
        )
        return KafkaCluster.single(config)
    return KafkaCluster.on_loopback(
        libs,
        data_dir / CLUSTER_DIR,
        settings.brokers,
        port,
        settings.kafka_controller_port,
        jvm_flags=settings.jvm_flags,
    )


def run_pipeline(settings: RunnerSettings, log_format: str | None = None) -> int:
    """Blocks until Ctrl-C/SIGTERM, or until a process fails too often; returns the exit status.
    `log_format` (`json`): every line of every service on the console in that format, and no
    status line; None: the services' warnings and state changes, and the status line."""
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    libs = fetch_kafka(settings.kafka_version, settings.kafka_cache_dir)
    kafka = kafka_of_run(settings, libs, data_dir)
    cluster = {"kafka_bootstrap": kafka.bootstrap} if len(kafka.nodes) > 1 else {}
    settings = settings.model_copy(update={"kafka_replication": kafka.replication, **cluster})
    log_dir = settings.log_dir or data_dir / "logs"
    settings, validation = with_validation_receiver(settings, data_dir)
    env = child_environment(settings) | {"COSNAP_LOG_DIR": str(log_dir.resolve())} | validation
    supervisor = Supervisor(settings, kafka, env, log_format)
    serve_status(settings.metrics_host, settings.run_metrics_port, supervisor.health)
    states = {BROKER: supervisor.kafka_state} if len(kafka.nodes) > 1 else {}
    console = Console(endpoints(settings), sys.stdout, states=states)
    code = 0
    try:
        began = time.monotonic()
        print(f"[kafka] starting Apache Kafka {settings.kafka_version} on {_nodes_text(kafka)}", flush=True)
        supervisor.start_kafka()
        created = ensure_topics(kafka.bootstrap, settings.topics, replication=kafka.replication)
        print(
            f"[kafka] ready in {time.monotonic() - began:.1f} s; "
            f"topics created: {', '.join(created) or 'none (all present)'}",
            flush=True,
        )
        keys = KeyStore(settings.keys_file)
        write_key = ensure_dev_key(keys, data_dir)
        read_key = ensure_dev_read_key(keys, data_dir)
        supervisor.start_services()

        def ready() -> None:
            _banner(settings, kafka, data_dir, log_dir, write_key, read_key)
            if log_format is None:
                console.start()

        supervisor.supervise(ready)
    except RunnerError as exc:
        _say(str(exc))
        code = 0 if supervisor.signals.stopping else 1  # a stop asked while Kafka started
    finally:
        console.stop()
        began = time.monotonic()
        _say("stopping")
        unclean = supervisor.stop()
        took = time.monotonic() - began
        if supervisor.signals.killed:
            _say(f"killed every process after a second signal ({took:.1f} s)")
            code = EXIT_SECOND_SIGNAL
        elif unclean:
            _say(f"stopped in {took:.1f} s, not cleanly: {'; '.join(unclean)}")
            code = code or 1
        else:
            _say(f"stopped in {took:.1f} s")
    return code


def _nodes_text(kafka: KafkaCluster) -> str:
    """`127.0.0.1:9092`, or `3 nodes: kafka-1 127.0.0.1:9092, kafka-2 127.0.0.1:40123, ...`."""
    nodes = node_names(kafka)
    if len(nodes) == 1:
        return kafka.bootstrap
    return f"{len(nodes)} nodes: " + ", ".join(f"{name} {node.bootstrap}" for name, node in nodes.items())


def _banner(
    settings: RunnerSettings,
    kafka: KafkaCluster,
    data_dir: Path,
    log_dir: Path,
    write_key: str,
    read_key: str,
) -> None:
    ingest = f"http://{settings.ingest_host}:{settings.ingest_port}"
    min_isr = min_insync_replicas(kafka.replication)
    durability = f"topics: {kafka.replication} replicas, min.insync.replicas {min_isr}"
    print(
        "\n"
        f"  Cosnap Metrics is running (data in {data_dir})\n"
        f"  kafka        {_nodes_text(kafka)}   ({durability})\n"
        f"  ingest API   {ingest}/v1/events\n"
        f"  API docs     {ingest}/docs\n"
        f"  dashboard    {settings.query_url}/dashboard\n"
        f"  health       {ingest}/health/detailed\n"
        f"  metrics      {ingest}/metrics, {settings.query_url}/metrics, streams and notifier on "
        f":{settings.streams_metrics_port} and :{settings.notify_metrics_port}\n"
        f"  supervisor   http://{settings.metrics_host}:{settings.run_metrics_port}/health (restarts)\n"
        f"  logs         {log_dir}/<service>.jsonl (here: state changes, warnings, a status line)\n"
        f"  write key    {write_key}   (also in {data_dir / DEV_KEY_FILE})\n"
        f"  ClickHouse   {settings.clickhouse_http_url or 'off'}   user default, password the read key\n"
        f"  read key     {read_key}   (also in {data_dir / DEV_READ_KEY_FILE})\n"
        f"  query        .venv/bin/cosnap-metrics query '{EXAMPLE_QUERY}'\n"
        f"  demo traffic .venv/bin/cosnap-metrics demo --minutes 5 --rate 200\n"
        f"  alerts       .venv/bin/cosnap-metrics alerts tail\n"
        "  Ctrl-C stops everything (a second Ctrl-C at once).\n",
        flush=True,
    )
