"""Migration 0004 moves a data directory of the previous release forward with its rows valid (real
chDB): events keep their values and, whatever their timestamps, one row per event id — the first
copy; on-time windows become part 0 of `metrics.windows`; a crash part-way through it is resumed."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client

from plumbing.clickhouse import connect
from sinks.clickhouse.ddl import _statements, apply_migrations, migrations

EVENTS = """
INSERT INTO m.events (event_id, project, type, timestamp, received_at, name, amount, currency, tags,
                      metric, value, unit, kafka_partition, kafka_offset)
VALUES ('r1', 'p', 'revenue', '2026-10-31 23:59:59.999', '2026-11-01 00:00:00', 'sub', 9.99, 'USD',
        {'plan': 'pro'}, '', NULL, '', 2, 7),
       ('r1', 'p', 'revenue', '2026-11-01 00:00:00.001', '2026-11-01 00:00:05', 'sub', 9.99, 'USD',
        {'plan': 'pro'}, '', NULL, '', 2, 3),
       ('l1', 'p', 'performance', '2026-11-01 00:00:01', '2026-11-01 00:00:05', '', NULL, '', {},
        'api.latency', 123.4, 'ms', 2, 4)
"""
AGGREGATES = """
INSERT INTO m.aggregates (project, type, name, currency, dims, series_id, granularity, window_start,
                          window_end, count, sum, min, max, mean, p50, sketch_positive, sketch_zeros,
                          emitted_at)
VALUES ('p', 'performance', 'api.latency', '', {'unit': 'ms'}, 's1', '1m', '2026-11-01 00:00:00',
        '2026-11-01 00:01:00', 2, 246.8, 123.4, 123.4, 123.4, 123.8, {241: 2}, 0, '2026-11-01 00:01:30')
"""


@pytest.fixture
def previous_release(tmp_path: Path) -> Client:
    """A store as release 0.1 left it: migrations 0001-0003 and rows in every table."""
    client = connect(f"chdb://{tmp_path / 'chdb'}")
    assert apply_migrations(client, "m", until=3) == [
        "0001_initial.sql",
        "0002_window_statistics.sql",
        "0003_alerts.sql",
    ]
    client.command(EVENTS)
    client.command(AGGREGATES)
    return client


def check_moved_forward(client: Client) -> None:
    rows = client.query(
        "SELECT event_id, kafka_offset, amount, tags FROM m.events FINAL ORDER BY event_id"
    ).result_rows
    # The copies of r1 fell in two months (two partitions before): one row now, the first copy.
    assert rows == [("l1", 4, None, {}), ("r1", 3, Decimal("9.99"), {"plan": "pro"})]
    windows = client.query(
        "SELECT count, sum, min, max, p50, late_count, parts FROM m.windows WHERE granularity = '1m'"
    ).result_rows
    count, total, low, high, p50, late, parts = windows[0]
    assert (count, total, low, high, late, parts) == (
        2,
        Decimal("246.8"),
        Decimal("123.4"),
        Decimal("123.4"),
        0,
        1,
    )
    assert abs(p50 - 123.4) <= 0.01 * 123.4  # from the kept bins
    assert client.query("SELECT DISTINCT part FROM m.aggregates").result_rows == [(0,)]
    assert client.query("SELECT count() FROM m.late_events").result_rows == [(0,)]


def test_migration_0004_keeps_every_row_valid(previous_release: Client) -> None:
    assert apply_migrations(previous_release, "m", until=4) == ["0004_late_corrections.sql"]
    check_moved_forward(previous_release)
    assert apply_migrations(previous_release, "m", until=4) == []


@pytest.mark.parametrize("crashed_after", range(1, 8))
def test_migration_0004_resumes_after_a_crash_part_way(previous_release: Client, crashed_after: int) -> None:
    """The sink died after `crashed_after` statements of 0004: the next start runs it whole."""
    sql = {version: text for version, _, text in migrations()}[4]
    for statement in _statements(sql)[:crashed_after]:
        previous_release.command(statement.replace("{database}", "m"))
    assert apply_migrations(previous_release, "m", until=4) == ["0004_late_corrections.sql"]
    check_moved_forward(previous_release)
