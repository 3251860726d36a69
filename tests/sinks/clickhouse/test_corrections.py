"""The sink's late corrections on real chDB: a late record's first copies become correction rows
(and a replay replaces them), copies of events stored earlier do not count, a record waits until
its events are stored, and a backfill's worth of ids is looked up in pieces."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from clickhouse_connect.driver.client import Client

from plumbing.clickhouse import connect
from sinks.clickhouse.corrections import IDS_PER_LOOKUP, LateCorrections, part_of
from sinks.clickhouse.ddl import apply_migrations
from tests.sinks.clickhouse.test_retention import keep_forever

SERIES = {"s1": {"type": "feature", "name": "anime", "currency": "", "dims": {"action": "applied"}}}


@pytest.fixture
def store(tmp_path: Path) -> Client:
    client = connect(f"chdb://{tmp_path / 'chdb'}")
    apply_migrations(client, "m")
    keep_forever(client, "m")  # the rows' dates are fixed
    return client


def stored(client: Client, ids: list[str], partition: int, offset: int) -> None:
    """Rows of metrics.events as the sink writes them for record `offset` of `partition`."""
    rows = [[i, "p", "feature", "2026-11-01 10:00:05", "2026-11-01 10:00:05", partition, offset] for i in ids]
    columns = ["event_id", "project", "type", "timestamp", "received_at", "kafka_partition", "kafka_offset"]
    client.insert("m.events", rows, column_names=columns)


def late_record(ids: list[str], partition: int, offset: int, second: int = 5) -> bytes:
    events: list[dict[str, Any]] = [
        {"event_id": i, "series_id": "s1", "timestamp": f"2026-11-01T10:00:{second:02d}Z", "value": "1"}
        for i in ids
    ]
    record = {
        "v": 1, "project": "p", "partition": partition, "offset": offset,
        "folded_at": "2026-11-02T00:00:00Z", "series": SERIES, "events": events,
    }  # fmt: skip
    return orjson.dumps(record)


def windows(client: Client) -> list[tuple[Any, ...]]:
    return client.query(
        "SELECT granularity, count, late_count FROM m.windows ORDER BY granularity"
    ).result_rows


def test_first_copies_count_once_and_a_replay_replaces(store: Client) -> None:
    corrections = LateCorrections(store, "m", "late", "events")
    stored(store, ["a", "b"], 0, 3)  # on-time copies, counted by the worker's windows
    stored(store, ["a", "c", "d"], 0, 9)  # the late record: a is a retry, c and d are new
    corrections.add(0, 0, late_record(["a", "c", "d"], 0, 9))
    assert corrections.flush(lambda partition: 9) == []  # the sink has not stored past offset 9
    assert corrections.first_pending(0) == 0 and windows(store) == []
    assert corrections.flush(lambda partition: 10) == []
    assert corrections.first_pending(0) is None
    assert windows(store) == [("10s", 2, 2), ("1h", 2, 2), ("1m", 2, 2)]
    counted = store.query("SELECT event_id, counted FROM m.late_events FINAL ORDER BY event_id").result_rows
    assert counted == [("a", 0), ("c", 1), ("d", 1)]
    parts = store.query("SELECT DISTINCT part FROM m.aggregates").result_rows
    assert parts == [(part_of(0, 9),)]

    corrections.add(0, 1, late_record(["a", "c", "d"], 0, 9))  # the same record again (a replay)
    corrections.flush(lambda partition: 10)
    assert windows(store) == [("10s", 2, 2), ("1h", 2, 2), ("1m", 2, 2)]


def test_a_backfill_of_ids_is_looked_up_in_pieces(store: Client) -> None:
    ids = [f"{n:032x}" for n in range(5 * IDS_PER_LOOKUP + 17)]  # 360 KB of ids: more than a query holds
    stored(store, ids, 1, 40)
    corrections = LateCorrections(store, "m", "late", "events")
    corrections.add(1, 0, late_record(ids, 1, 40))
    assert corrections.flush(lambda partition: 41) == []
    assert windows(store) == [
        ("10s", len(ids), len(ids)),
        ("1h", len(ids), len(ids)),
        ("1m", len(ids), len(ids)),
    ]
