"""The sink commits Kafka offsets only after ClickHouse took the rows: a kill -9 replays, never loses."""

from __future__ import annotations

import time

import httpx
import pytest
from kafka import KafkaAdminClient

from cosnap_metrics.broker import KafkaBroker
from tests.conftest import Pipeline

pytestmark = [pytest.mark.kafka]


def _committed(kafka: KafkaBroker, group: str) -> int:
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    try:
        offsets = admin.list_group_offsets(group)[group]
    finally:
        admin.close()
    return sum(meta.offset for meta in offsets.values() if meta.offset > 0)


def test_kill_before_insert_replays_every_event(pipeline: Pipeline, kafka: KafkaBroker) -> None:
    group = f"{pipeline.topics.internal}sink"
    # A sink that holds rows for 10 minutes: it consumes, but neither inserts nor commits.
    pipeline.env |= {"COSNAP_SINK_FLUSH_MS": "600000", "COSNAP_SINK_BATCH_ROWS": "1000000"}
    pipeline.start("sink", "ingest")
    events = [
        {"event_id": f"k{i}", "type": "feature", "feature": "ai_effect.anime", "action": "applied"}
        for i in range(200)
    ]
    for start in range(0, 200, 50):
        response = httpx.post(
            f"{pipeline.ingest_url}/v1/events",
            headers={"Authorization": f"Bearer {pipeline.write_key}"},
            json={"events": events[start : start + 50]},
        )
        assert response.status_code == 202
    time.sleep(3)  # ample time for the sink to have consumed all four records
    assert pipeline.query("SELECT count() FROM metrics.events") == [[0]]
    assert _committed(kafka, group) == 0

    pipeline.processes["sink"].kill()  # kill -9: the buffered rows are gone with the process
    pipeline.processes["sink"].wait()
    del pipeline.processes["sink"]

    pipeline.env |= {"COSNAP_SINK_FLUSH_MS": "200"}
    pipeline.start("sink")
    deadline = time.monotonic() + 60  # the killed member keeps its partitions for the session timeout
    while pipeline.query("SELECT count() FROM metrics.events")[0][0] != 200:
        assert time.monotonic() < deadline, pipeline.log("sink")
        time.sleep(0.3)
    assert pipeline.query("SELECT uniqExact(event_id) FROM metrics.events") == [[200]]
    deadline = time.monotonic() + 10
    while _committed(kafka, group) != 4:  # four envelopes, now inserted and committed
        assert time.monotonic() < deadline
        time.sleep(0.2)
