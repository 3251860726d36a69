"""Create the pipeline's topics (docs/reference.md, "Kafka topics") on a broker; safe to run any
number of times."""

from __future__ import annotations

import contextlib
import time

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from schemas.topics import Topics, min_insync_replicas


def ensure_topics(bootstrap: str, topics: Topics, replication: int = 1, timeout: float = 60.0) -> list[str]:
    """Create missing topics, each with `replication` replicas and min.insync.replicas their
    majority, and return the names created (a topic that exists is left as it is). Retries while
    a fresh KRaft controller is still electing or too few brokers have registered; raises
    KafkaError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return _create_missing(bootstrap, topics, replication)
        except KafkaError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _create_missing(bootstrap: str, topics: Topics, replication: int) -> list[str]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="cosnap-provision")
    try:
        existing = set(admin.list_topics())
        min_isr = {"min.insync.replicas": str(min_insync_replicas(replication))}
        missing = [
            NewTopic(spec.name, spec.partitions, replication, topic_configs=spec.config | min_isr)
            for spec in topics.specs()
            if spec.name not in existing
        ]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another process won the race
                admin.create_topics(missing)
        return [topic.name for topic in missing]
    finally:
        admin.close()
