"""The rule of `/health/detailed` and the classes of rejected events, without Kafka."""

from __future__ import annotations

import pytest

from ingest.body import Unparseable
from ingest.health import verdict
from ingest.metrics import reject_reason
from schemas.health import ClickHouseHealth, GroupLag, KafkaHealth, ServiceHealth, http_status

KAFKA_UP = KafkaHealth(reachable=True)
CLICKHOUSE_UP = ClickHouseHealth(answers=True, via="http://127.0.0.1:8124/health")
CAUGHT_UP = [
    GroupLag(group="metrics.internal.sink", lag=0),
    GroupLag(group="metrics.internal.notify", lag=None),
]


def test_everything_answering_and_caught_up_is_healthy() -> None:
    assert verdict(KAFKA_UP, CLICKHOUSE_UP, CAUGHT_UP, max_lag=100) == ("healthy", [])


@pytest.mark.parametrize(
    ("kafka", "reason"),
    [
        (KafkaHealth(reachable=False, error="KafkaTimeoutError"), "Kafka unreachable"),
        (KafkaHealth(reachable=True, missing_topics=["metrics.events.v1"]), "topics missing"),
    ],
)
def test_kafka_down_or_topics_missing_is_unhealthy_503(kafka: KafkaHealth, reason: str) -> None:
    status, problems = verdict(kafka, CLICKHOUSE_UP, [], max_lag=100)
    assert status == "unhealthy" and http_status(status) == 503
    assert reason in problems[0]


def test_clickhouse_down_failing_inserts_lag_or_unknown_lag_is_degraded_200() -> None:
    down = ClickHouseHealth(answers=False, via="http://127.0.0.1:8124/health", error="ConnectError")
    failing = CLICKHOUSE_UP.model_copy(
        update={"sink": ServiceHealth(service="sink", status="degraded", problems=["inserts failing: x"])}
    )
    lagging = [GroupLag(group="metrics.internal.streams", lag=101)]
    unknown_lag = KafkaHealth(reachable=True, error="CoordinatorNotAvailableError")
    cases = [
        (KAFKA_UP, down, CAUGHT_UP, "ClickHouse does not answer"),
        (KAFKA_UP, failing, CAUGHT_UP, "sink: inserts failing"),
        (KAFKA_UP, CLICKHOUSE_UP, lagging, "lags 101 records (over 100)"),
        (unknown_lag, CLICKHOUSE_UP, [], "consumer lag unknown"),
    ]
    for kafka, clickhouse, lags, reason in cases:
        status, problems = verdict(kafka, clickhouse, lags, max_lag=100)
        assert (status, http_status(status)) == ("degraded", 200)
        assert any(reason in problem for problem in problems), problems


def test_rejections_count_under_a_few_classes_whatever_the_reason_text() -> None:
    assert (
        reject_reason(Unparseable("item is not valid JSON: x", "{"), "item is not valid JSON: x")
        == "unparseable"
    )
    assert reject_reason({}, "timestamp too old") == "timestamp"
    assert reject_reason({}, "timestamp: Input should be a valid datetime") == "timestamp"
    assert reject_reason({}, "duplicate event_id in this batch") == "duplicate"
    assert reject_reason({}, "currency: String should match pattern '^[A-Z]{3}$'") == "invalid"
