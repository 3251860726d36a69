"""Retention on ClickHouse's engine (chDB): migration 0006 gives raw events and each window
granularity a TTL of its own; the settings replace them at sink start (and only when they
differ); a row older than its table's TTL is gone after the next merge (OPTIMIZE ... FINAL)."""

from __future__ import annotations

from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client

from plumbing.clickhouse import connect
from schemas.settings import SinkSettings
from sinks.clickhouse.ddl import apply_migrations
from sinks.clickhouse.retention import apply_retention

EVENTS = """
INSERT INTO m.events
    (event_id, project, type, timestamp, received_at, feature, action, kafka_partition, kafka_offset)
VALUES ('old', 'p', 'feature', now64(3) - INTERVAL 100 DAY, now64(3), 'share', 'clicked', 0, 1),
       ('recent', 'p', 'feature', now64(3) - INTERVAL 60 DAY, now64(3), 'share', 'clicked', 0, 2),
       ('new', 'p', 'feature', now64(3), now64(3), 'share', 'clicked', 0, 3)
"""
# One window per (granularity, age in days); its name says both.
WINDOWS = [("10s", 10), ("10s", 0), ("1m", 100), ("1m", 30), ("1h", 1000), ("1h", 400)]


def insert_windows(client: Client) -> None:
    values = ", ".join(
        f"('p', 'feature', '{g}-{days}d', 's{g}{days}', '{g}', now() - INTERVAL {days} DAY, "
        f"now() - INTERVAL {days} DAY + INTERVAL 10 SECOND, 1, now64(3))"
        for g, days in WINDOWS
    )
    columns = "project, type, name, series_id, granularity, window_start, window_end, count, emitted_at"
    client.command(f"INSERT INTO m.aggregates ({columns}) VALUES {values}")  # noqa: S608 - constants


def settings(database: str = "m", **days: int) -> SinkSettings:
    return SinkSettings(clickhouse_database=database, **{f"retention_{k}_days": v for k, v in days.items()})


def keep_forever(client: Client, database: str) -> None:
    """No retention on `database`: for tests whose rows have fixed dates, which the clock
    carries past any TTL."""
    apply_retention(client, settings(database, events=0, **{"10s": 0, "1m": 0, "1h": 0}))


def show_create(client: Client, table: str) -> str:
    return str(client.query(f"SHOW CREATE TABLE m.{table}").result_rows[0][0])


def kept(client: Client) -> tuple[list[str], list[str]]:
    for table in ("events", "aggregates", "late_events"):
        client.command(f"OPTIMIZE TABLE m.{table} FINAL")
    events = client.query("SELECT event_id FROM m.events ORDER BY event_id").result_rows
    windows = client.query("SELECT name FROM m.aggregates ORDER BY name").result_rows
    return [row[0] for row in events], [row[0] for row in windows]


@pytest.fixture
def store(tmp_path: Path) -> Client:
    client = connect(f"chdb://{tmp_path / 'chdb'}")
    assert "0006_retention.sql" in apply_migrations(client, "m")
    return client


def test_the_migration_gives_each_table_its_default_ttl_and_the_defaults_alter_nothing(store: Client) -> None:
    assert "TTL timestamp + toIntervalDay(90)" in show_create(store, "events")
    assert "TTL timestamp + toIntervalDay(90)" in show_create(store, "late_events")
    aggregates = show_create(store, "aggregates")
    for granularity, days in (("10s", 7), ("1m", 90), ("1h", 730)):
        assert f"window_start + toIntervalDay({days}) WHERE granularity = '{granularity}'" in aggregates
    assert apply_retention(store, settings()) == []  # the defaults are what 0006 set


def test_rows_older_than_their_ttl_go_at_the_next_merge_and_the_settings_change_the_ttl(
    store: Client,
) -> None:
    # Longer retention first (1-hour windows forever), so that the old rows can be written.
    longer = settings(events=365, **{"10s": 30}, **{"1m": 365}, **{"1h": 0})
    assert apply_retention(store, longer) == ["events", "late_events", "aggregates"]
    assert apply_retention(store, longer) == []  # a restart with the same settings alters nothing
    assert "toIntervalDay(365)" in show_create(store, "events")
    assert "'1h'" not in show_create(store, "aggregates")
    store.command(EVENTS)
    insert_windows(store)
    every_window = sorted(f"{g}-{days}d" for g, days in WINDOWS)
    assert kept(store) == (["new", "old", "recent"], every_window)

    # Back to the defaults: events 90 days, windows 7 / 90 / 730 days.
    assert apply_retention(store, settings()) == ["events", "late_events", "aggregates"]
    assert kept(store) == (["new", "recent"], ["10s-0d", "1h-400d", "1m-30d"])

    # 0 keeps a table's rows forever: its TTL is removed.
    assert apply_retention(store, settings(events=0)) == ["events", "late_events"]
    assert "TTL" not in show_create(store, "events")
    assert "TTL" in show_create(store, "aggregates")
