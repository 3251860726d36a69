"""Apache Kafka (KRaft) from the official Maven Central artifacts: one node, or a cluster of
nodes on loopback (`KafkaCluster`), each node broker and controller at once.

The jars are fetched once with `mvn dependency:copy-dependencies` into a cache outside the
repository; storage is formatted on first start; every node listens on loopback only. A node's
data directory is 0700 and everything the node writes in it (segments hold the stored events, as
well as its logs) is 0600 and 0700: the node runs with the umask `PRIVATE_UMASK`, whatever the
umask of the process that starts it.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError

from cosnap_metrics.errors import RunnerError
from cosnap_metrics.processes import signal_group, spawn, stop
from cosnap_metrics.progress import ProgressLine
from plumbing.outage import unreachable
from plumbing.private_files import PRIVATE_UMASK, private_dir, replace_private
from schemas.topics import min_insync_replicas


def fetch_kafka(version: str, cache_dir: Path) -> Path:
    """Return the directory holding the broker's jars, downloading them on first use.

    Blocks while Maven runs, showing its progress on stderr (see MavenProgress). Raises
    RunnerError when Maven or Java is missing or the download fails.
    """
    libs = cache_dir / version / "libs"
    done = libs / ".complete"
    if done.exists():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None or shutil.which("java") is None:
        raise RunnerError("the embedded Kafka broker needs Java 17+ and Maven (mvn) on PATH")
    workdir = cache_dir / version
    workdir.mkdir(parents=True, exist_ok=True)
    pom = workdir / "pom.xml"
    pom.write_text(resources.files("cosnap_metrics").joinpath("kafka/pom.xml").read_text())
    progress = MavenProgress(ProgressLine("kafka"))
    progress.line.note(f"fetching Apache Kafka {version} from Maven Central into {libs} (once)")
    maven = [mvn, "-B", "-f", str(pom), f"-Dkafka.version={version}"]
    # The tree reads POMs only, so the jars are counted before any of them is downloaded.
    _run_maven([*maven, "-Dscope=runtime", "dependency:tree"], progress.tree)
    copy = [f"-DoutputDirectory={libs}", "-DincludeScope=runtime", "dependency:copy-dependencies"]
    _run_maven([*maven, *copy], progress.copy)
    jars = len(list(libs.glob("*.jar")))
    done.write_text(f"{jars} jars\n")
    already = jars - progress.fetched
    local = f" ({already} were in the local Maven repository)" if already else ""
    progress.line.finish(f"{jars} jars ready{local}")
    return libs


def _run_maven(argv: list[str], on_line: Callable[[str], None]) -> None:
    """Run Maven, handing each line of its output to `on_line`; RunnerError if it fails."""
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as maven:  # noqa: S603
        if maven.stdout is None:
            raise RunnerError("could not read mvn's output")
        tail: list[str] = []
        for line in maven.stdout:
            tail = [*tail[-30:], line]
            on_line(line)
        if maven.wait() != 0:
            raise RunnerError("mvn failed to fetch the Kafka broker:\n" + "".join(tail))


_TREE_JAR = re.compile(r"^\[INFO\] [|\s]*[+\\]- \S+:jar:")


class MavenProgress:
    """Maven's output (`mvn -B`) as a progress line: the files read while `dependency:tree`
    resolves, then `fetching N jars (n/N)` while `dependency:copy-dependencies` downloads the
    tree's N jars (jars already in the local Maven repository are not downloaded again)."""

    def __init__(self, line: ProgressLine) -> None:
        self.line = line
        self.jars = self.fetched = self._read = 0

    def tree(self, output: str) -> None:
        if _TREE_JAR.match(output):
            self.jars += 1
        elif _downloaded(output):
            self._read += 1
            self.line.update(f"resolving the dependencies ({self._read} files read)")

    def copy(self, output: str) -> None:
        name = _downloaded(output)
        if name.endswith(".jar"):
            self.fetched += 1
            self.line.update(
                f"fetching {self.jars} jars from Maven Central ({self.fetched}/{self.jars}) {name}",
                self.fetched / max(self.jars, 1),
            )


def _downloaded(output: str) -> str:
    """The file name of a `Downloaded from <repo>: <url> (<size> at <speed>)` line, else ""."""
    words = output.removeprefix("[INFO] ").split()
    return words[3].rsplit("/", 1)[-1] if words[:2] == ["Downloaded", "from"] and len(words) > 3 else ""


# Ports for listening are picked below the kernel's ephemeral range, from this one up.
LISTEN_PORTS_FROM = 10_000
_PICK = random.SystemRandom()  # not reseeded by test runners (the same seed in every process)


def free_port() -> int:
    """A TCP port of loopback no process listens on now (see `free_ports`)."""
    [port] = free_ports(1)
    return port


def free_ports(count: int, taken: Collection[int] = ()) -> list[int]:
    """`count` distinct TCP ports of loopback no process uses now, none of them in `taken`.

    In a clean-clone test run a port the kernel picked (`bind(0)`) was in use by another process
    seconds later, when the sink bound it. The kernel picks from its ephemeral range
    (`ip_local_port_range`), which is also where every outgoing connection gets its local port, so
    these are picked at random below it. Every socket stays bound until all are picked: one at a
    time, the kernel handed the same port out twice (a three-node cluster got two nodes on one
    port)."""
    below = _ephemeral_start()
    with contextlib.ExitStack() as held:
        ports: list[int] = []
        while len(ports) < count:
            sock = held.enter_context(socket.socket())
            wanted = _PICK.randrange(LISTEN_PORTS_FROM, below) if below > LISTEN_PORTS_FROM else 0
            try:
                sock.bind(("127.0.0.1", wanted))
            except OSError:  # in use
                continue
            port: int = sock.getsockname()[1]
            if port not in taken:
                ports.append(port)
        return ports


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """One node. Alone (`voters` empty) it is its own quorum; in a cluster `voters` lists every
    node's controller (`controller.quorum.voters`, `id@host:port,...`) and `replication` is the
    cluster's replication factor: the default of new topics and that of the offsets and
    transaction topics, with `min.insync.replicas` its majority (schemas.topics)."""

    libs: Path
    data_dir: Path
    port: int
    controller_port: int
    heap: str = "768m"
    node_id: int = 1
    voters: str = ""
    replication: int = 1
    jvm_flags: tuple[str, ...] = ()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def quorum(self) -> str:
        return self.voters or f"{self.node_id}@127.0.0.1:{self.controller_port}"


class KafkaBroker:
    """One KRaft node acting as broker and controller.

    `start()` formats storage on first use and blocks until the broker answers metadata
    requests; `stop()` shuts it down (SIGTERM, then SIGKILL after the timeout). After the broker
    died, `start()` starts it again on the same data directory and ports (the runner's restart).
    A node of a cluster answers only once a majority of the quorum runs: `KafkaCluster` launches
    its nodes (`launch()`) before it waits for any (`wait_ready()`).
    """

    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return self.config.bootstrap

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        """The broker's process while started (it may have exited since: `poll()` it)."""
        return self._process

    def _java(self, main: str, *args: str, log: Path | None = None) -> list[str]:
        cfg = self.config
        log_dir = cfg.data_dir / "logs"
        log4j = resources.files("cosnap_metrics").joinpath("kafka/log4j2.properties")
        return [
            "java", f"-Xmx{cfg.heap}", "-Xms256m", *cfg.jvm_flags, "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={log4j}", f"-Dkafka.logs.dir={log_dir}",
            "-cp", f"{cfg.libs}/*", main, *args,
        ]  # fmt: skip

    def _write_properties(self) -> Path:
        cfg = self.config
        props = private_dir(cfg.data_dir) / "server.properties"
        min_isr = str(min_insync_replicas(cfg.replication))
        lines = {
            "process.roles": "broker,controller",
            "node.id": str(cfg.node_id),
            "controller.quorum.voters": cfg.quorum,
            "listeners": f"PLAINTEXT://127.0.0.1:{cfg.port},CONTROLLER://127.0.0.1:{cfg.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{cfg.port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(cfg.data_dir / "data"),
            "num.partitions": "3",
            "default.replication.factor": str(cfg.replication),
            "min.insync.replicas": min_isr,
            "unclean.leader.election.enable": "false",
            "offsets.topic.replication.factor": str(cfg.replication),
            "offsets.topic.num.partitions": "6",
            "transaction.state.log.replication.factor": str(cfg.replication),
            "transaction.state.log.min.isr": min_isr,
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",
        }
        replace_private(props, "".join(f"{k}={v}\n" for k, v in lines.items()))
        return props

    def _format_storage(self, props: Path, cluster_id: str) -> None:
        if (self.config.data_dir / "data" / "meta.properties").exists():
            return
        result = subprocess.run(  # noqa: S603
            self._java("kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c", str(props)),
            capture_output=True,
            text=True,
            check=False,
            umask=PRIVATE_UMASK,
        )
        if result.returncode != 0:
            raise RunnerError(f"formatting Kafka storage failed:\n{result.stdout}{result.stderr}")

    def start(self, timeout: float = 90.0, cancelled: Callable[[], bool] = lambda: False) -> None:
        """Start the broker and wait until it answers; RunnerError if it exits first, does not
        answer within `timeout` (it is then stopped) or `cancelled()` turns true meanwhile."""
        self.launch()
        try:
            self.wait_ready(timeout, cancelled)
        except RunnerError:
            self.stop(timeout=5)
            raise

    def launch(self, cluster_id: str | None = None) -> None:
        """Start the node's process without waiting for it; its storage is formatted first, on
        first use, with `cluster_id` (a new one when None: a node alone). Blocks only while the
        storage tool runs; RunnerError if it fails."""
        props = self._write_properties()
        self._format_storage(props, cluster_id or new_cluster_id())
        log_dir = private_dir(self.config.data_dir / "logs")
        # The child takes the umask it is forked with; ours is PRIVATE_UMASK for that instant only
        # (the CLI sets it for good; a test or a benchmark may start the broker with another).
        previous = os.umask(PRIVATE_UMASK)
        try:
            with (log_dir / "stdout.log").open("ab") as out:
                self._process = spawn(self._java("kafka.Kafka", str(props)), stdout=out)
        finally:
            os.umask(previous)

    def wait_ready(self, timeout: float, cancelled: Callable[[], bool] = lambda: False) -> None:
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if cancelled():
                raise RunnerError("stopped before Kafka was ready")
            if self._process is not None and self._process.poll() is not None:
                raise RunnerError(
                    f"Kafka exited with {self._process.returncode}; see {self.config.data_dir / 'logs'}"
                )
            closed = unreachable(self.bootstrap)
            if closed is not None:  # not listening yet: a cheap probe, so `cancelled` is seen at once
                last_error = ConnectionRefusedError(closed)
                time.sleep(0.3)
                continue
            try:
                # Short timeouts and retries: a broker that just opened its port is seen within
                # a second, not after the client's default backoff (up to 30 s).
                admin = KafkaAdminClient(
                    bootstrap_servers=self.bootstrap,
                    client_id="cosnap-readiness",
                    request_timeout_ms=3000,
                    bootstrap_timeout_ms=3000,
                    reconnect_backoff_max_ms=500,
                )
                try:
                    admin.describe_cluster()
                    return
                finally:
                    admin.close()
            except (KafkaError, OSError) as exc:
                last_error = exc
                time.sleep(0.3)
        raise RunnerError(f"Kafka did not answer on {self.bootstrap} within {timeout:.0f}s: {last_error}")

    def terminate(self) -> None:
        """SIGTERM the broker without waiting (a cluster stops its nodes together)."""
        if self._process is not None:
            signal_group(self._process, signal.SIGTERM)

    def stop(self, timeout: float = 30.0) -> None:
        if self._process is not None:
            stop(self._process, timeout)
            self._process = None

    def kill(self) -> None:
        """SIGKILL the broker at once (fault tests)."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None


def new_cluster_id() -> str:
    """A KRaft cluster id: 22 characters of URL-safe base64, as `kafka-storage random-uuid`."""
    return uuid.uuid4().hex[:22]


CLUSTER_FILE = "cluster.json"
# Per node of a cluster (docs/findings.md, "Three KRaft nodes on two cores"): a smaller heap
# than one node's.
CLUSTER_HEAP = "512m"


class KafkaCluster:
    """The runner's Kafka: one node (`single`), or `size` nodes on loopback (`on_loopback`),
    each broker and controller (combined mode) and a voter of the quorum.

    `start()` launches every node, then blocks until each answers; `stop()` stops them all
    together. Tests and the runner reach a node by `nodes[i]` (its `kill()`, `start()`,
    `process`); a node started again keeps its directory, ports and id, and rejoins.
    """

    def __init__(self, nodes: list[KafkaBroker], cluster_id: str | None = None) -> None:
        self.nodes = nodes
        self.cluster_id = cluster_id

    @classmethod
    def single(cls, config: BrokerConfig) -> KafkaCluster:
        """One node, its own quorum (`cosnap-metrics run` without `--brokers`)."""
        return cls([KafkaBroker(config)])

    @classmethod
    def on_loopback(
        cls,
        libs: Path,
        data_dir: Path,
        size: int,
        port: int,
        controller_port: int,
        heap: str = CLUSTER_HEAP,
        jvm_flags: tuple[str, ...] = (),
    ) -> KafkaCluster:
        """`size` nodes under `data_dir` (`node-1`, `node-2`, ...): node 1 on `port` and
        `controller_port`, the others on free ports picked on the cluster's first start and kept
        in `data_dir/cluster.json` with the cluster id, so every later start (of a node, or of
        the whole cluster) finds them where the others and the clients expect them. The
        replication factor is min(size, 3), min.insync.replicas its majority."""
        layout = _cluster_layout(data_dir, size, port, controller_port)
        nodes: list[tuple[int, int, int]] = layout["nodes"]
        voters = ",".join(f"{node_id}@127.0.0.1:{controller}" for node_id, _, controller in nodes)
        replication = min(size, 3)
        return cls(
            [
                KafkaBroker(
                    BrokerConfig(
                        libs,
                        data_dir / f"node-{node_id}",
                        broker,
                        controller,
                        heap,
                        node_id,
                        voters,
                        replication,
                        jvm_flags,
                    )
                )
                for node_id, broker, controller in nodes
            ],
            layout["cluster_id"],
        )

    @property
    def bootstrap(self) -> str:
        """Every node's address, `host:port,...`: what clients bootstrap from."""
        return ",".join(node.bootstrap for node in self.nodes)

    @property
    def replication(self) -> int:
        return self.nodes[0].config.replication

    def start(self, timeout: float = 120.0, cancelled: Callable[[], bool] = lambda: False) -> None:
        """Launch the nodes not running, then wait until every node answers; RunnerError (and
        every node stopped) if one exits first or does not answer within `timeout` in all."""
        self.restart([node for node in self.nodes if node.process is None], timeout, cancelled)

    def restart(
        self, nodes: list[KafkaBroker], timeout: float = 120.0, cancelled: Callable[[], bool] = lambda: False
    ) -> None:
        """Launch `nodes` together, then wait for each: a node of a cluster serves only with a
        majority of the quorum running, so nodes that are down come back at once, not one after
        another. RunnerError (and `nodes` stopped) if one does not answer within `timeout`."""
        deadline = time.monotonic() + timeout
        try:
            for node in nodes:
                node.launch(self.cluster_id)
            for node in nodes:
                node.wait_ready(max(deadline - time.monotonic(), 1.0), cancelled)
        except RunnerError:
            for node in nodes:
                node.stop(timeout=5)
            raise

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM every node at once, then SIGKILL those still running after `timeout`."""
        running = [node for node in self.nodes if node.process is not None]
        for node in running:
            node.terminate()
        deadline = time.monotonic() + timeout
        for node in running:
            node.stop(max(deadline - time.monotonic(), 0.1))

    def leader(self, topic: str, partition: int) -> KafkaBroker:
        """The node that leads `topic`'s `partition` now (a fault test's target)."""
        node_id = describe_partition(self.bootstrap, topic, partition).leader
        return next(node for node in self.nodes if node.config.node_id == node_id)


def _cluster_layout(data_dir: Path, size: int, port: int, controller_port: int) -> dict[str, Any]:
    """The cluster's id and each node's (id, port, controller port), read from CLUSTER_FILE or
    made and written there; node 1 takes `port` and `controller_port` (the configured ones)."""
    path = private_dir(data_dir) / CLUSTER_FILE
    if path.exists():
        layout: dict[str, Any] = json.loads(path.read_text())
        if len(layout["nodes"]) != size:
            raise RunnerError(
                f"{data_dir} holds a cluster of {len(layout['nodes'])} nodes, not {size}: "
                "use another data directory"
            )
    else:
        ports = iter(free_ports(2 * (size - 1), taken={port, controller_port}))
        others = [[node_id, next(ports), next(ports)] for node_id in range(2, size + 1)]
        layout = {"cluster_id": new_cluster_id(), "nodes": [[1, 0, 0], *others]}
    layout["nodes"][0] = [1, port, controller_port]
    replace_private(path, json.dumps(layout) + "\n")
    return layout


@dataclass(frozen=True, slots=True)
class PartitionReplicas:
    """Where one partition lives now, by node id: its leader (-1 while it has none), every
    replica, and the replicas in sync."""

    leader: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


def describe_partition(bootstrap: str, topic: str, partition: int) -> PartitionReplicas:
    """What the cluster says of one partition now (a metadata request)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="cosnap-describe")
    try:
        [described] = admin.describe_topics([topic])
    finally:
        admin.close()
    found = next(p for p in described["partitions"] if p["partition_index"] == partition)
    return PartitionReplicas(found["leader_id"], tuple(found["replica_nodes"]), tuple(found["isr_nodes"]))
