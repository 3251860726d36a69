"""Windows that close around a Kafka outage longer than the worker's producer timeout are all
emitted once Kafka is back: closed windows have left the worker's state, so the worker sends a
refused batch again rather than dropping it (streams/publishing.py, `WindowPublisher`)."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import pytest

from cosnap_metrics.broker import KafkaBroker
from tests.conftest import Pipeline, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.e2e]


def test_windows_closed_during_a_long_kafka_outage_are_emitted_after_it(
    pipeline_on_own_kafka: Pipeline, own_kafka: KafkaBroker
) -> None:
    pipeline = pipeline_on_own_kafka
    pipeline.start("sink", "streams", "ingest")
    pipeline.post([{"type": "feature", "feature": "warm.up", "action": "x"}])
    assert wait_for(lambda: "owns events partition" in pipeline.log("streams"), timeout=60)
    events = [
        {"event_id": uuid.uuid4().hex, "type": "feature", "feature": "f", "action": "x",
         "timestamp": datetime.now(UTC).isoformat()}
        for _ in range(100)
    ]  # fmt: skip
    pipeline.post(events)
    time.sleep(1)  # folded in; their pane closes within seconds, while Kafka is down
    own_kafka.stop()
    time.sleep(55)  # longer than the 30 s after which the worker's producer gives a record up
    own_kafka.start()
    assert wait_for(
        lambda: (
            pipeline.query(
                "SELECT granularity, sum(count) FROM metrics.aggregates FINAL WHERE name = 'f'"
                " AND granularity IN ('10s', '1m') GROUP BY granularity ORDER BY granularity"
            )
            == [["10s", 100], ["1m", 100]]
        ),
        timeout=120,
    ), pipeline.log("streams")[-3000:]
