"""Faults of a Kafka node under load, on the file's three-node cluster (RF 3, min ISR 2,
acks=all), each node's log directory on a tmpfs of its own: kill -9 of the leader of the events
partition the load lands on, SIGSTOP of that leader for 30 s, and that leader's disk full.
Through each, nothing acknowledged is lost and nothing is counted twice (tests/faults/harness.py
says how that is measured)."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from cosnap_metrics.broker import KafkaBroker, KafkaCluster
from cosnap_metrics.processes import signal_group
from tests.conftest import Pipeline, new_cluster, wait_for
from tests.faults.harness import (
    IN_SYNC_WITHIN_S,
    LOAD_AROUND_S,
    Load,
    all_in_sync,
    events_partition,
    fill,
    recovery_s,
    settle_and_measure,
    tmpfs,
)

pytestmark = [pytest.mark.kafka, pytest.mark.e2e, pytest.mark.faults, pytest.mark.timeout(420)]

NODE_DISK = "256m"  # each node's log directory: the file's faults write a few tens of MiB to it
HALTED_WITHIN_S = 60.0  # a node whose disk is full stops
REFUSED_WITHIN_S = 90.0  # with two nodes down the ingest's writes time out into 503s


@pytest.fixture(scope="module")
def cluster(kafka_libs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """Three nodes, each with its log directory (`log.dirs`, the metadata log's too) on a tmpfs."""
    data_dir = tmp_path_factory.mktemp("kafka-cluster")
    with ExitStack() as disks:
        for node in (1, 2, 3):
            disks.enter_context(tmpfs(data_dir / f"node-{node}" / "data", NODE_DISK))
        cluster = new_cluster(kafka_libs, data_dir)
        cluster.start()
        try:
            yield cluster
        finally:
            cluster.stop()


def test_kill_9_of_the_events_leader_under_load_loses_nothing(
    cluster: KafkaCluster, faulted: Pipeline
) -> None:
    with Load(faulted, "fault-kill-leader") as load:
        leader = _leader_under_load(cluster, faulted, load)
        leader.kill()
        killed = time.monotonic()  # two nodes of three hold min ISR: the fault is felt now
        recovered = recovery_s(faulted, load, killed)
        cluster.restart([leader])
        _back_in_sync(cluster, faulted)
    settle_and_measure(faulted, load, "kill -9 of the events partition's leader, restarted", recovered)


def test_sigstop_of_the_events_leader_for_30_s_loses_nothing(
    cluster: KafkaCluster, faulted: Pipeline
) -> None:
    with Load(faulted, "fault-sigstop-leader") as load:
        leader = _leader_under_load(cluster, faulted, load)
        assert leader.process is not None
        signal_group(leader.process, signal.SIGSTOP)
        try:
            time.sleep(30)
        finally:
            signal_group(leader.process, signal.SIGCONT)
        resumed = time.monotonic()
        recovered = recovery_s(faulted, load, resumed)
        _back_in_sync(cluster, faulted)
    settle_and_measure(faulted, load, "SIGSTOP of the events partition's leader for 30 s", recovered)


def test_disks_full_halt_their_nodes_the_ingest_answers_503_and_loses_nothing(
    cluster: KafkaCluster, faulted: Pipeline
) -> None:
    """The leader's disk fills first: the node halts and the two others carry on (as after a
    kill -9, a write caught by the halt may time out into one 503). Then a second
    node's disk fills (replicas hold the same data: their disks fill together): one replica is
    left, below min ISR, and the ingest answers 503 with Retry-After until space is freed and the
    nodes are started again."""
    with Load(faulted, "fault-disk-full") as load:
        leader = _leader_under_load(cluster, faulted, load)
        follower = next(node for node in cluster.nodes if node is not leader)
        fillers = [_fill_until_halted(leader)]
        recovery_s(faulted, load, time.monotonic())  # two nodes take the writes again
        refused_before = load.statuses[503]
        fillers.append(_fill_until_halted(follower))
        assert wait_for(lambda: load.statuses[503] > refused_before, REFUSED_WITHIN_S, interval=0.5), dict(
            load.statuses
        )
        for filler in fillers:
            filler.unlink()
        freed = time.monotonic()
        cluster.restart([leader, follower])
        recovered = recovery_s(faulted, load, freed)
        _back_in_sync(cluster, faulted)
    settle_and_measure(faulted, load, "disk full: the leader's, then a follower's", recovered)
    assert load.retry_after and all(seconds > 0 for seconds in load.retry_after)


def _fill_until_halted(node: KafkaBroker) -> Path:
    """Fill the node's disk and wait until its process ended; the file that fills it."""
    process = node.process
    assert process is not None
    filler = fill(node.config.data_dir / "data")
    assert wait_for(lambda: process.poll() is not None, HALTED_WITHIN_S), node.config.node_id
    return filler


def _leader_under_load(cluster: KafkaCluster, faulted: Pipeline, load: Load) -> KafkaBroker:
    """After the load ran a while: the node leading the events partition its project is keyed to."""
    time.sleep(LOAD_AROUND_S)
    return cluster.leader(faulted.topics.events, events_partition(faulted, load))


def _back_in_sync(cluster: KafkaCluster, faulted: Pipeline) -> None:
    """Wait until every node is in every ISR of the events topic, then load on a while."""
    assert wait_for(lambda: all_in_sync(cluster, faulted.topics.events), IN_SYNC_WITHIN_S, interval=1)
    time.sleep(LOAD_AROUND_S)
