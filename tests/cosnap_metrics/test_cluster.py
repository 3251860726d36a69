"""The runner's three-node Kafka cluster (cosnap_metrics/broker.py, `KafkaCluster`) on real
Apache Kafka nodes: its durability settings, a record acknowledged with acks=all surviving a
kill -9 of its partition's leader, a killed node rejoining the in-sync replicas, and the ingest
answering 503 with Retry-After, losing nothing, while two of the three nodes are down."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

from cosnap_metrics.broker import LISTEN_PORTS_FROM, KafkaCluster, describe_partition, free_ports
from cosnap_metrics.provision import ensure_topics
from schemas.topics import Topics
from tests.conftest import make_pipeline, wait_for
from tests.cosnap_metrics.runner import CLI, runner_env

RECOVERED_WITHIN_S = 120.0  # a node started again is back in every ISR (two busy cores)


def _configs(cluster: KafkaCluster, kind: ConfigResourceType, name: str) -> dict[str, str]:
    """The configuration `name` (a topic, a node id) has, every key with its value. A topic just
    created is described empty by a node that has not yet learnt of it from the controller (it
    happened in a clean-clone run), so this asks until a node knows it."""

    def described() -> dict[str, str]:
        admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap, client_id="cosnap-test")
        try:
            configs = admin.describe_configs([ConfigResource(kind, name)], config_filter="all")
        finally:
            admin.close()
        return {key: entry["value"] for key, entry in configs[kind.name.lower()][name].items()}

    found = wait_for(described, 30)
    assert found, f"no node described {kind.name.lower()} {name} within 30 s"
    return found


def _values(cluster: KafkaCluster, topic: str) -> list[bytes]:
    """Every value of `topic`, from its start to its end now, in each partition's order."""
    consumer = KafkaConsumer(
        bootstrap_servers=cluster.bootstrap,
        group_id=f"test-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        consumer_timeout_ms=60_000,
    )
    values: list[bytes] = []
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(partitions)
        ends = consumer.end_offsets(partitions)
        for partition in partitions:
            consumer.seek_to_beginning(partition)
            while consumer.position(partition) < ends[partition]:
                for records in consumer.poll(timeout_ms=1000, max_records=500).values():
                    values.extend(record.value for record in records)
    finally:
        consumer.close()
    return values


def _in_sync(cluster: KafkaCluster, topic: str, partitions: int) -> bool:
    return all(len(describe_partition(cluster.bootstrap, topic, p).isr) == 3 for p in range(partitions))


def test_a_record_acknowledged_by_all_survives_kill_9_of_its_leader_which_rejoins(
    kafka_cluster: KafkaCluster,
) -> None:
    assert [node.config.node_id for node in kafka_cluster.nodes] == [1, 2, 3]
    assert all(node.process is not None and node.process.poll() is None for node in kafka_cluster.nodes)
    assert len(set(kafka_cluster.bootstrap.split(","))) == 3
    broker = _configs(kafka_cluster, ConfigResourceType.BROKER, "1")
    assert broker["default.replication.factor"] == "3"
    assert broker["min.insync.replicas"] == "2"
    assert broker["offsets.topic.replication.factor"] == "3"
    assert broker["transaction.state.log.replication.factor"] == "3"
    assert broker["transaction.state.log.min.isr"] == "2"
    assert broker["unclean.leader.election.enable"] == "false"

    topics = Topics(f"t{uuid.uuid4().hex[:10]}.")
    assert ensure_topics(kafka_cluster.bootstrap, topics, kafka_cluster.replication)
    for spec in topics.specs():
        assert _configs(kafka_cluster, ConfigResourceType.TOPIC, spec.name)["min.insync.replicas"] == "2"
        for partition in range(spec.partitions):
            assert len(describe_partition(kafka_cluster.bootstrap, spec.name, partition).replicas) == 3

    producer = KafkaProducer(bootstrap_servers=kafka_cluster.bootstrap, acks="all", retries=10)
    try:
        producer.send(topics.events, b"before", partition=0).get(timeout=30)
        leader = kafka_cluster.leader(topics.events, 0)
        leader.kill()
        # One node of three down: min.insync.replicas 2 still holds, writes go on.
        producer.send(topics.events, b"after", partition=0).get(timeout=60)
    finally:
        producer.close()
    assert _values(kafka_cluster, topics.events) == [b"before", b"after"]
    # The consumer group's offsets live on the offsets topic: three replicas too.
    assert len(describe_partition(kafka_cluster.bootstrap, "__consumer_offsets", 0).replicas) == 3

    kafka_cluster.restart([leader])
    assert wait_for(lambda: _in_sync(kafka_cluster, topics.events, 6), RECOVERED_WITHIN_S, interval=1)
    assert leader.process is not None and leader.process.poll() is None


def test_the_ingest_answers_503_while_two_nodes_are_down_and_loses_nothing(
    kafka_cluster: KafkaCluster, tmp_path: Path
) -> None:
    pipeline = make_pipeline(kafka_cluster, tmp_path)
    pipeline.start("ingest")
    accepted: list[str] = []
    refused: list[httpx.Response] = []

    def post(client: httpx.Client, name: str) -> httpx.Response:
        event_id = str(uuid.uuid4())
        event: dict[str, Any] = {"type": "feature", "feature": name, "action": "used", "event_id": event_id}
        response = client.post("/v1/events", json={"events": [event]}, timeout=60)
        if response.status_code == 202:
            accepted.append(event_id)
        return response

    try:
        with httpx.Client(
            base_url=pipeline.ingest_url, headers={"Authorization": f"Bearer {pipeline.write_key}"}
        ) as client:
            for _ in range(5):
                assert post(client, "up").status_code == 202
            down = kafka_cluster.nodes[1:]
            for node in down:
                node.kill()
            began = time.monotonic()
            response = post(client, "quorum-lost")
            answered_s = time.monotonic() - began
            assert response.status_code == 503, response.text
            assert int(response.headers["Retry-After"]) > 0
            assert answered_s < 60, answered_s
            refused.append(response)
            kafka_cluster.restart(down)
            back = wait_for(lambda: post(client, "back").status_code == 202, RECOVERED_WITHIN_S, interval=1)
            assert back, pipeline.log("ingest")
    finally:
        pipeline.stop()
        for node in kafka_cluster.nodes:
            if node.process is None:
                kafka_cluster.restart([node])

    # Every event answered 202 is in Kafka, once; the refused one's client knows to send it again.
    stored = Counter(
        event["event_id"]
        for value in _values(kafka_cluster, pipeline.topics.events)
        for event in orjson.loads(value)["events"]
    )
    assert all(stored[event_id] == 1 for event_id in accepted), (accepted, stored)
    topic = pipeline.topics.events
    assert wait_for(lambda: _in_sync(kafka_cluster, topic, 6), RECOVERED_WITHIN_S, interval=1)
    print(f"503 with Retry-After {refused[0].headers['Retry-After']} after {answered_s:.1f} s")


def test_run_refuses_a_number_of_brokers_it_cannot_start(tmp_path: Path) -> None:
    env = runner_env(tmp_path / "data")
    flag = subprocess.run([CLI, "run", "--brokers", "2"], env=env, capture_output=True, text=True, timeout=60)
    assert flag.returncode == 2 and "invalid choice: 2" in flag.stderr
    env["COSNAP_BROKERS"] = "2"
    variable = subprocess.run([CLI, "run"], env=env, capture_output=True, text=True, timeout=60)
    assert variable.returncode == 2 and "2 brokers: `run` starts 1 or 3" in variable.stderr
    assert not (tmp_path / "data" / "kafka-cluster").exists()


def test_a_clusters_ports_are_distinct_and_leave_out_the_configured_ones() -> None:
    """Picked one at a time, the kernel handed two nodes of one cluster the same port. And none is
    from the range the kernel gives outgoing connections their local ports from."""
    ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    taken = set(free_ports(2))
    for _ in range(20):
        ports = free_ports(6, taken=taken)
        assert len(set(ports)) == 6 and not taken & set(ports)
        assert all(LISTEN_PORTS_FROM <= port < ephemeral for port in ports)
