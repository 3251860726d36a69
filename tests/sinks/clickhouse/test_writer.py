"""The batch writer against chDB: a batch ClickHouse refuses for some rows is split until those
rows are found; the others land once; a transient failure keeps what did not land."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from clickhouse_connect.driver.client import Client

from plumbing.clickhouse import connect
from sinks.clickhouse.ddl import _statements, apply_migrations, migrations
from sinks.clickhouse.errors import SinkError
from sinks.clickhouse.rows import AGGREGATE_COLUMNS, EVENT_COLUMNS, aggregate_rows, event_rows
from sinks.clickhouse.writer import BatchWriter, engine_message, refused_for_content
from tests.sinks.clickhouse.test_retention import keep_forever


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Client]:
    """chDB in this process (one data directory per process at a time: closed after the test)."""
    chdb = connect(f"chdb://{tmp_path / 'clickhouse'}")
    apply_migrations(chdb, "metrics")
    yield chdb
    chdb.close()


def envelope(amounts: list[Any], prefix: str = "e") -> bytes:
    events = [
        {
            "event_id": f"{prefix}{i}",
            "type": "revenue",
            "name": "subscription.renewal",
            "amount": amount,
            "currency": "USD",
            "timestamp": "2026-11-27T10:00:00.000Z",
            "received_at": "2026-11-27T10:00:00.000Z",
            "request_id": f"req-{prefix}{i}",
        }
        for i, amount in enumerate(amounts)
    ]
    return orjson.dumps({"v": 1, "project": "p", "events": events})


def count(client: Client, table: str = "metrics.events") -> int:
    rows = client.query(f"SELECT count() FROM {table}").result_rows  # noqa: S608  # a constant name
    return int(rows[0][0])


POISON = ["0E+100000000", "0E+30", "1E+40", "1e999999999", "-1e999999999"]


def test_poison_rows_are_handed_back_and_the_rest_lands(client: Client) -> None:
    writer = BatchWriter(client, "metrics.events", EVENT_COLUMNS)
    amounts: list[Any] = ["1.5"] * 200
    for place, poison in zip((0, 17, 18, 120, 199), POISON, strict=True):
        amounts[place] = poison
    writer.add(event_rows(envelope(amounts[:100]), 3, 41), 3, 41)
    writer.add(event_rows(envelope(amounts[100:], prefix="f"), 4, 7), 4, 7)

    refused = writer.flush()

    assert [(r.partition, r.offset, r.index) for r in refused] == [
        (3, 41, 0),
        (3, 41, 17),
        (3, 41, 18),
        (4, 7, 20),
        (4, 7, 99),
    ]
    for row, poison in zip(refused, POISON, strict=True):
        assert orjson.loads(row.row)["amount"] == poison
        assert "Decimal value is too big" in row.reason
        assert row.reason.endswith("(ARGUMENT_OUT_OF_BOUND)")
        assert "in file/uri" not in row.reason and "version" not in row.reason
    assert writer.pending == 0
    assert count(client) == 195
    assert client.query("SELECT toString(sum(amount)) FROM metrics.events").result_rows == [("292.5",)]


def test_every_row_refused_in_a_batch_of_them(client: Client) -> None:
    writer = BatchWriter(client, "metrics.events", EVENT_COLUMNS)
    writer.add(event_rows(envelope(["1E+40"] * 9), 0, 0), 0, 0)
    assert [r.index for r in writer.flush()] == list(range(9))
    assert count(client) == 0


def test_other_refusals_name_their_column(client: Client) -> None:
    writer = BatchWriter(client, "metrics.events", EVENT_COLUMNS)
    rows = event_rows(envelope(["1", "2", "3"]), 0, 5)
    bad_time = orjson.loads(rows[0]) | {"timestamp": "half past ten"}
    bad_type = orjson.loads(rows[1]) | {"amount": [1, 2]}
    writer.add([orjson.dumps(bad_time), orjson.dumps(bad_type), rows[2]], 0, 5)
    refused = writer.flush()
    assert [r.index for r in refused] == [0, 1]
    assert "(CANNOT_PARSE_DATETIME)" in refused[0].reason and "timestamp" in refused[0].reason
    assert "(CANNOT_PARSE_INPUT_ASSERTION_FAILED)" in refused[1].reason
    assert count(client) == 1


def test_aggregate_rows_too(client: Client) -> None:
    window = {
        "v": 1, "project": "p", "type": "revenue", "name": "n", "currency": "USD", "dims": {},
        "series_id": "s", "granularity": "1m", "window_start": "2026-11-27T10:00:00Z",
        "window_end": "2026-11-27T10:01:00Z", "count": 1, "sum": "5", "min": "5", "max": "5", "mean": 5.0,
        "emitted_at": "2026-11-27T10:01:30Z",
    }  # fmt: skip
    writer = BatchWriter(client, "metrics.aggregates", AGGREGATE_COLUMNS)
    writer.add(aggregate_rows(orjson.dumps(window | {"sum": "1E+40"}), 1, 1), 1, 1)
    writer.add(aggregate_rows(orjson.dumps(window | {"series_id": "t"}), 1, 2), 1, 2)
    refused = writer.flush()
    assert [(r.offset, r.index) for r in refused] == [(1, 0)]
    assert count(client, "metrics.aggregates") == 1


def test_a_batch_over_a_hundred_months_is_split_not_refused(client: Client) -> None:
    keep_forever(client, "metrics")  # events of 2000-2012 are past the default retention
    writer = BatchWriter(client, "metrics.events", EVENT_COLUMNS)
    rows = []
    for month in range(150):
        event = orjson.loads(event_rows(envelope(["1"], prefix=f"m{month}-"), 0, month)[0])
        event["timestamp"] = f"{2000 + month // 12}-{month % 12 + 1:02d}-01T00:00:00.000Z"
        rows.append(orjson.dumps(event))
    writer.add(rows, 0, 0)
    assert writer.flush() == []
    assert count(client) == 150


class DropsTheTableAfter:
    """The real chDB client; after `inserts` successful inserts it drops the events table, so
    the next insert fails the way a store that went away does (UNKNOWN_TABLE)."""

    def __init__(self, client: Client, inserts: int) -> None:
        self.client, self.left = client, inserts

    def raw_insert(self, *args: Any, **kwargs: Any) -> None:
        self.client.raw_insert(*args, **kwargs)
        self.left -= 1
        if self.left == 0:
            self.client.command("DROP TABLE metrics.events")


def test_a_transient_failure_while_splitting_keeps_only_what_did_not_land(client: Client) -> None:
    amounts: list[Any] = [str(i + 1) for i in range(64)]
    amounts[1] = amounts[40] = "1E+40"
    # Halves are tried first half first: rows 0, 2-3, 4-7, 8-15, 16-31 and 32-39 land (six
    # inserts, row 1 refused on its way), then the table is gone when rows 40-47 are tried.
    store = DropsTheTableAfter(client, inserts=6)
    writer = BatchWriter(store, "metrics.events", EVENT_COLUMNS)  # type: ignore[arg-type]
    writer.add(event_rows(envelope(amounts), 2, 9), 2, 9)
    with pytest.raises(SinkError) as raised:
        writer.flush()
    assert "UNKNOWN_TABLE" in str(raised.value)
    assert not refused_for_content(raised.value)
    assert writer.pending == 1 + 24  # row 1 (refused, found again next time) and rows 40-63

    client.command(_statements(migrations()[0][2])[0].replace("{database}", "metrics"))  # the store is back
    refused = writer.flush()
    assert [(r.partition, r.offset, r.index) for r in refused] == [(2, 9, 1), (2, 9, 40)]
    assert all(orjson.loads(r.row)["event_id"] == f"e{r.index}" for r in refused)
    landed = client.query("SELECT event_id FROM metrics.events ORDER BY kafka_offset, event_id").result_rows
    assert sorted(row[0] for row in landed) == sorted(f"e{i}" for i in range(41, 64))


def test_inserts_leave_the_free_space_floor_for_merges(client: Client, tmp_path: Path) -> None:
    """Below COSNAP_CLICKHOUSE_MIN_FREE_BYTES free on the store's disk ClickHouse refuses the
    insert as a store failure (retried, rows kept), never as the rows' fault."""
    free = shutil.disk_usage(tmp_path).free
    floored = BatchWriter(client, "metrics.events", EVENT_COLUMNS, min_free_bytes=free + (1 << 40))
    floored.add(event_rows(envelope(["1", "2"]), 0, 0), 0, 0)
    with pytest.raises(SinkError) as raised:
        floored.flush()
    assert "NOT_ENOUGH_SPACE" in str(raised.value) and not refused_for_content(raised.value)
    assert floored.pending == 2 and count(client) == 0
    below = BatchWriter(client, "metrics.events", EVENT_COLUMNS, min_free_bytes=1 << 20)
    below.add(event_rows(envelope(["1", "2"]), 0, 0), 0, 0)
    assert below.flush() == [] and count(client) == 2


def test_transient_and_content_errors_are_told_apart(client: Client) -> None:
    errors = {}
    for name, statement in {
        "content": 'INSERT INTO metrics.events (event_id, amount) FORMAT JSONEachRow {"amount": "1E+40"}',
        "absent table": "INSERT INTO metrics.nowhere (a) VALUES (1)",
        "memory": "SELECT count() FROM numbers(10000000) GROUP BY number SETTINGS max_memory_usage = 1000000",
    }.items():
        with pytest.raises(Exception) as raised:  # whatever the driver raises
            client.command(statement)
        errors[name] = raised.value
    assert refused_for_content(errors["content"])
    assert not refused_for_content(errors["absent table"])
    assert not refused_for_content(errors["memory"])
    assert not refused_for_content(ConnectionRefusedError("[Errno 111] Connection refused"))


def test_the_engine_message_without_its_wrapping() -> None:
    """A server's error as clickhouse-connect words it (the chDB form is in the tests above)."""
    server = (
        "Received ClickHouse exception, code: 72, server response: Code: 72. DB::Exception: Cannot "
        "read floating point value here: (while reading the value of key value): (at row 1)\n: While "
        "executing ParallelParsingBlockInputFormat. (CANNOT_PARSE_NUMBER) (version 25.8.1.1 (official "
        "build)) (for url http://127.0.0.1:8123)"
    )
    assert engine_message(Exception(server)) == (
        "Cannot read floating point value here: (while reading the value of key value): (at row 1) "
        "(CANNOT_PARSE_NUMBER)"
    )
    assert refused_for_content(Exception(server))
    assert not refused_for_content(Exception("Code: 252. Too many parts (3001). Merges are (TOO_MANY_PARTS)"))
