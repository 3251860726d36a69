"""A Kafka broker of a benchmark's own, with the pipeline's topics under a fresh prefix."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

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
        )
    )
    try:
        progress.note(f"starting Apache Kafka on {broker.bootstrap}")
        broker.start()
        topics = Topics(f"bench{uuid.uuid4().hex[:6]}.")
        ensure_topics(broker.bootstrap, topics)
        yield Bench(broker.bootstrap, topics, work, progress)
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
