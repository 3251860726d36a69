"""A Kafka broker of a benchmark's own, with the pipeline's topics under a fresh prefix."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from cosnap_metrics.broker import BrokerConfig, KafkaBroker, fetch_kafka
from cosnap_metrics.progress import ProgressLine
from cosnap_metrics.provision import ensure_topics
from schemas.settings import RunnerSettings
from schemas.topics import Topics
from tests.conftest import free_port


@dataclass(frozen=True)
class Bench:
    bootstrap: str
    topics: Topics
    work: Path
    progress: ProgressLine  # a line per phase or round on stderr; results go to stdout
    broker_pid: int = 0  # the Java broker's process


@contextmanager
def bench_kafka(name: str) -> Iterator[Bench]:
    """A broker in a temporary directory with the pipeline's topics under a unique prefix;
    everything is stopped and removed on exit."""
    settings = RunnerSettings()
    progress = ProgressLine(f"bench.{name}")
    work = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    broker = KafkaBroker(
        BrokerConfig(
            fetch_kafka(settings.kafka_version, settings.kafka_cache_dir),
            work / "kafka",
            free_port(),
            free_port(),
            jvm_flags=settings.jvm_flags,
        )
    )
    try:
        progress.note(f"starting Apache Kafka on {broker.bootstrap}")
        broker.start()
        topics = Topics(f"bench{uuid.uuid4().hex[:6]}.")
        ensure_topics(broker.bootstrap, topics)
        process = broker.process
        yield Bench(broker.bootstrap, topics, work, progress, process.pid if process is not None else 0)
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)


_COORDINATOR_STARTING = frozenset(
    {
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError._TIMED_OUT,
    }
)


class Offsets:
    """A client kept open to read, often and cheaply, a topic's end offsets and what `group`
    committed on it (without joining the group)."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, group: str) -> None:
        self.topic, self.group = topic, group
        self._partitions = [TopicPartition(topic, p) for p in range(partitions)]
        self._consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
        )
        self._committed = {tp.partition: 0 for tp in self._partitions}
        self._admin = AdminClient({"bootstrap.servers": bootstrap})

    def assigned(self) -> bool:
        """Whether a member of the group holds partitions of the topic (the group is stable)."""
        try:
            (described,) = self._admin.describe_consumer_groups([self.group]).values()
            members = described.result(timeout=10).members
        except KafkaException:
            return False  # no such group yet, or its coordinator is still starting
        return any(tp.topic == self.topic for member in members for tp in member.assignment.topic_partitions)

    def ends(self) -> dict[int, int]:
        """Partition -> the offset the next record written will get."""
        return {
            tp.partition: self._consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in self._partitions
        }

    def committed(self) -> dict[int, int]:
        """Partition -> the group's committed offset, 0 where it committed none. While the
        broker cannot tell (its group coordinator is still starting), the last answer it gave."""
        try:
            found = self._consumer.committed(self._partitions, timeout=10)
        except KafkaException as exc:
            if exc.args[0].code() not in _COORDINATOR_STARTING and not exc.args[0].retriable():
                raise
            return self._committed
        self._committed = {tp.partition: max(tp.offset, 0) for tp in found}
        return self._committed

    def close(self) -> None:
        self._consumer.close()
