"""The streams worker's lag per partition and its /health report, from what the timer sees."""

from __future__ import annotations

from faust.types import TP
from prometheus_client import REGISTRY

from streams.metrics import WorkerStatus

LAG = "cosnap_streams_consumer_lag_records"


class AssignedPartitions:
    """Stands in for Faust's consumer: partitions 0 and 1 assigned, 1 not fetched from yet."""

    def assignment(self) -> set[TP]:
        return {TP("events", 0), TP("events", 1)}

    def highwater(self, tp: TP) -> int | None:
        return {0: 10, 1: None}[tp.partition]


def test_lag_is_highwater_minus_the_next_offset_of_assigned_partitions_only() -> None:
    status = WorkerStatus(tick_s=0.5)
    starting = status.health()
    assert (starting.service, starting.status) == ("streams", "unhealthy")

    status.ticked(AssignedPartitions(), "events", {0: 4, 1: 0, 2: 7})
    report = status.health()
    assert report.status == "healthy"
    assert report.details["lag"] == {"0": 6}
    assert REGISTRY.get_sample_value(LAG, {"partition": "0"}) == 6

    status.forget(0)  # revoked: the new owner reports it
    assert REGISTRY.get_sample_value(LAG, {"partition": "0"}) is None
