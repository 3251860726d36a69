"""A consumer group's rejoin on a real broker: kafka-python's own KafkaConsumer, polled briefly,
never finishes the rejoin that partitions added to its topic ask for (its commits refused the
while), and GroupConsumer (plumbing/consumer_group.py) does, within a poll."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient, NewPartitions, NewTopic
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from cosnap_metrics.broker import KafkaBroker
from plumbing.consumer_group import GroupConsumer
from tests.conftest import wait_for

pytestmark = [pytest.mark.kafka]


@pytest.fixture
def topic(kafka: KafkaBroker) -> Iterator[str]:
    name = f"t{uuid.uuid4().hex[:10]}.rejoin"
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap, client_id="cosnap-test")
    admin.create_topics([NewTopic(name, 2, 1)])
    yield name
    admin.delete_topics([name])
    admin.close()


def _joined_then_grown(kind: Callable[..., KafkaConsumer], kafka: KafkaBroker, topic: str) -> KafkaConsumer:
    """A consumer of `kind` that joined its group on `topic`'s 2 partitions, after which the topic
    was given 4: the group's leader (this consumer) must rejoin to assign the new ones."""
    consumer = kind(
        bootstrap_servers=kafka.bootstrap,
        group_id=f"{topic}.group",
        enable_auto_commit=False,
        metadata_max_age_ms=500,  # the added partitions are seen within half a second
        session_timeout_ms=10_000,
        heartbeat_interval_ms=3_000,
    )
    assert wait_for(lambda: consumer.partitions_for_topic(topic), 30)
    consumer.subscribe([topic])
    # Polls long enough for each join to finish within one: a shorter one can leave even this
    # first join half done with KafkaConsumer.
    assert wait_for(lambda: consumer.poll(timeout_ms=2_000) is not None and _commits(consumer, topic), 30)
    assert len(consumer.assignment()) == 2
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap, client_id="cosnap-test")
    try:
        admin.create_partitions({topic: NewPartitions(4)})
    finally:
        admin.close()
    return consumer


def _commits(consumer: KafkaConsumer, topic: str) -> bool:
    try:
        consumer.commit({TopicPartition(topic, 0): OffsetAndMetadata(0, "", -1)}, timeout_ms=3_000)
    except KafkaError:  # RebalanceInProgressError while the member is not stable
        return False
    return True


def _polled_briefly_takes_all_four(consumer: KafkaConsumer, topic: str, seconds: float) -> bool:
    """Polls with no wait (as a loop busy between polls does), 20 times a second, until the
    consumer owns the 4 partitions and its commit is accepted, or `seconds` pass."""

    def check() -> bool:
        consumer.poll(timeout_ms=0)
        time.sleep(0.05)
        return len(consumer.assignment()) == 4 and _commits(consumer, topic)

    return bool(wait_for(check, seconds, interval=0))


def test_kafka_pythons_own_consumer_never_finishes_the_rejoin(kafka: KafkaBroker, topic: str) -> None:
    """The library's behaviour GroupConsumer works around. Should an upgrade of kafka-python make
    this fail, GroupConsumer is no longer needed."""
    consumer = _joined_then_grown(KafkaConsumer, kafka, topic)
    try:
        assert not _polled_briefly_takes_all_four(consumer, topic, 8)
        assert len(consumer.assignment()) == 2
        assert not _commits(consumer, topic)
    finally:
        consumer.close()


def test_a_group_consumer_takes_the_added_partitions_and_commits(kafka: KafkaBroker, topic: str) -> None:
    consumer = _joined_then_grown(GroupConsumer, kafka, topic)
    try:
        assert _polled_briefly_takes_all_four(consumer, topic, 30)
        assert consumer.assignment() == {TopicPartition(topic, p) for p in range(4)}
    finally:
        consumer.close()
