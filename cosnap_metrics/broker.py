"""A single-node Apache Kafka broker (KRaft) from the official Maven Central artifacts.

The jars are fetched once with `mvn dependency:copy-dependencies` into a cache outside the
repository; storage is formatted on first start; the broker listens on loopback only. Its data
directory is 0700 and everything the broker writes in it (segments hold the stored events, as
well as its logs) is 0600 and 0700: the broker runs with the umask `PRIVATE_UMASK`, whatever the
umask of the process that starts it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError

from cosnap_metrics.errors import RunnerError
from cosnap_metrics.processes import spawn, stop
from cosnap_metrics.progress import ProgressLine
from plumbing.outage import unreachable
from plumbing.private_files import PRIVATE_UMASK, private_dir, replace_private


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


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    libs: Path
    data_dir: Path
    port: int
    controller_port: int
    heap: str = "768m"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


class KafkaBroker:
    """One KRaft node acting as broker and controller.

    `start()` formats storage on first use and blocks until the broker answers metadata
    requests; `stop()` shuts it down (SIGTERM, then SIGKILL after the timeout). After the broker
    died, `start()` starts it again on the same data directory and ports (the runner's restart).
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
            "java", f"-Xmx{cfg.heap}", "-Xms256m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={log4j}", f"-Dkafka.logs.dir={log_dir}",
            "-cp", f"{cfg.libs}/*", main, *args,
        ]  # fmt: skip

    def _write_properties(self) -> Path:
        cfg = self.config
        props = private_dir(cfg.data_dir) / "server.properties"
        lines = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{cfg.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{cfg.port},CONTROLLER://127.0.0.1:{cfg.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{cfg.port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(cfg.data_dir / "data"),
            "num.partitions": "3",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "6",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",
        }
        replace_private(props, "".join(f"{k}={v}\n" for k, v in lines.items()))
        return props

    def _format_storage(self, props: Path) -> None:
        if (self.config.data_dir / "data" / "meta.properties").exists():
            return
        cluster_id = uuid.uuid4().hex[:22]
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
        props = self._write_properties()
        self._format_storage(props)
        log_dir = private_dir(self.config.data_dir / "logs")
        # The child takes the umask it is forked with; ours is PRIVATE_UMASK for that instant only
        # (the CLI sets it for good; a test or a benchmark may start the broker with another).
        previous = os.umask(PRIVATE_UMASK)
        try:
            with (log_dir / "stdout.log").open("ab") as out:
                self._process = spawn(self._java("kafka.Kafka", str(props)), stdout=out)
        finally:
            os.umask(previous)
        try:
            self.wait_ready(timeout, cancelled)
        except RunnerError:
            self.stop(timeout=5)
            raise

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
