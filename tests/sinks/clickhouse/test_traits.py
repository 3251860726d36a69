"""Segment's identify, group and alias calls in `metrics.traits` (migration 0005, real chDB): one
row per call with its traits as sent, and a retried call kept once, its first copy."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client

from plumbing.clickhouse import connect
from schemas.segment import TraitsMessage, TraitsRecord
from sinks.clickhouse.ddl import apply_migrations
from sinks.clickhouse.rows import TRAIT_COLUMNS, trait_rows
from sinks.clickhouse.writer import BatchWriter


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Client]:
    chdb = connect(f"chdb://{tmp_path / 'clickhouse'}")
    assert "0005_traits.sql" in apply_migrations(chdb, "metrics")
    yield chdb
    chdb.close()


def record(request_id: str) -> bytes:
    at = datetime(2026, 11, 27, 10, 0, 0, 123000, tzinfo=UTC)
    shared = {"timestamp": at, "received_at": at, "request_id": request_id, "context": "{}"}
    calls = [
        TraitsMessage(message_id="t-1", type="identify", user_id="u1", traits='{"credits":12.50}', **shared),
        TraitsMessage(
            message_id="t-2", type="group", anonymous_id="a1", group_id="g1", traits="{}", **shared
        ),
        TraitsMessage(message_id="t-3", type="alias", user_id="u1", previous_id="a1", traits="{}", **shared),
    ]
    return TraitsRecord(project="p", messages=calls).model_dump_json(exclude_none=True).encode()


def test_each_call_is_one_row_and_a_retry_keeps_the_first_copy(client: Client) -> None:
    writer = BatchWriter(client, "metrics.traits", TRAIT_COLUMNS)
    writer.add(trait_rows(record("req-1"), 1, 7), 1, 7)
    writer.add(trait_rows(record("req-2"), 1, 9), 1, 9)  # the same calls, retried
    assert writer.flush() == []
    rows = client.query(
        "SELECT message_id, type, user_id, anonymous_id, group_id, previous_id, traits, request_id,"
        " toString(timestamp) FROM metrics.traits FINAL ORDER BY message_id"
    ).result_rows
    assert [row[:6] for row in rows] == [
        ("t-1", "identify", "u1", "", "", ""),
        ("t-2", "group", "", "a1", "g1", ""),
        ("t-3", "alias", "u1", "", "", "a1"),
    ]
    assert {row[7] for row in rows} == {"req-1"}
    assert json.loads(rows[0][6]) == {"credits": 12.5} and rows[0][6] == '{"credits":12.50}'
    assert rows[0][8] == "2026-11-27 10:00:00.123"
    extracted = client.query(
        "SELECT JSONExtractFloat(traits, 'credits') FROM metrics.traits FINAL WHERE message_id = 't-1'"
    )
    assert extracted.result_rows == [(12.5,)]
