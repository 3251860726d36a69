"""The fault files' fixtures: the file's cluster (`cluster`: the three-node `kafka_cluster`
unless the file gives its own) and one pipeline on it for all the file's faults, which run one
after another, each as a project of its own (tests/faults/harness.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cosnap_metrics.broker import KafkaCluster
from tests.conftest import Pipeline
from tests.faults.harness import pipeline_on


@pytest.fixture(scope="module")
def cluster(kafka_cluster: KafkaCluster) -> KafkaCluster:
    return kafka_cluster


@pytest.fixture(scope="module")
def faulted(cluster: KafkaCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    with pipeline_on(cluster, tmp_path_factory.mktemp("pipeline")) as pipeline:
        yield pipeline
