"""The pure helpers of the sink and peers benchmarks (the benchmarks themselves are not tests)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import orjson

from bench.peers.series import minute_key, series_events
from bench.sink.__main__ import Placed
from bench.sink.raw import column_value, to_columns

ENVELOPE = {
    "project": "p",
    "events": [
        {
            "type": "performance",
            "metric": "api.latency",
            "value": 12.5,
            "timestamp": "2026-12-04T10:00:01.000Z",
        },
        {"type": "revenue", "name": "renewal", "amount": "9.99", "timestamp": "2026-12-04T10:00:02.000Z"},
        {"type": "conversion", "funnel": "f", "step": "s", "timestamp": "2026-12-04T10:00:03.000Z"},
    ],
}


def test_series_events_name_each_event_as_the_raw_loop_does() -> None:
    assert series_events(ENVELOPE) == [
        ("p;performance;api.latency", "2026-12-04T10:00:01.000Z", 12.5),
        ("p;revenue;renewal", "2026-12-04T10:00:02.000Z", 9.99),
        ("p;conversion;f:s", "2026-12-04T10:00:03.000Z", 1),
    ]
    assert minute_key("p;feature;x", 1_796_400_000) == "p;feature;x|1m|2026-12-04T16:00:00Z"


def test_rows_become_the_values_clickhouse_connect_inserts() -> None:
    types = {
        "t": "DateTime64(3, 'UTC')",
        "a": "Nullable(Decimal(38, 9))",
        "m": "Map(String, String)",
        "s": "String",
    }
    rows = [
        orjson.dumps({"t": "2026-12-04T10:00:01.500Z", "a": "1.5"}),
        orjson.dumps({"s": "x", "m": {"k": "v"}}),
    ]
    columns = to_columns(rows, types, ["t", "a", "m", "s"])
    assert columns[0][0] == datetime.fromisoformat("2026-12-04T10:00:01.500+00:00")
    assert columns[1] == [Decimal("1.5"), None]
    assert columns[2] == [{}, {"k": "v"}]
    assert columns[3] == ["", "x"]
    assert column_value("Nullable(UInt16)") == (None, None)
    assert column_value("UInt64") == (None, 0)


def test_committed_offsets_count_the_events_of_the_records_before_them() -> None:
    placed = Placed({0: [500, 500, 7], 1: [500], 2: []})
    assert placed.total == 1507
    assert placed.events_before({0: 2, 1: 0, 2: 0}) == 1000
    assert placed.events_before({0: 3, 1: 1, 2: 0}) == 1507
