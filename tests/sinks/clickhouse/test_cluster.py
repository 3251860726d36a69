"""The migrations on a ClickHouse cluster (COSNAP_CLICKHOUSE_CLUSTER, sinks/clickhouse/cluster.py),
proven on chDB as far as an engine without Keeper or distributed DDL goes:

- unset, every statement is today's, byte for byte;
- every statement made for a cluster is parsed by ClickHouse's own parser (`formatQuery`), and
  each local table and ALTER formats to today's statement but for its name, `ON CLUSTER` and the
  replicated engine's two leading arguments (so ORDER BY, PARTITION BY, TTL, versions, columns
  are kept);
- each sharding key hashes columns of its table's ORDER BY (copies of a row share a shard);
- in a chDB process of its own, configured with a one-shard cluster, its macros and ClickHouse's
  in-memory Keeper: every replicated local table is created by the engine, its Keeper path and
  replica name resolved from the macros; and the whole migration history runs with the
  Distributed tables for real (ON CLUSTER dropped and the local tables unreplicated, which is
  what chDB cannot run: no DDL queue, and a replica never turns writable without a Keeper
  server), including 0004's rebuild of `events` with rows in it, the sink's writer inserting
  through `metrics.events` with the cluster's insert settings, `FINAL` and `metrics.windows`
  reading through Distributed tables, and retention altering the local tables.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import traceback
import uuid
from pathlib import Path
from typing import Any, cast

import clickhouse_connect
import orjson
import pytest
from clickhouse_connect.driver.client import Client

from cosnap_metrics.broker import free_port
from plumbing.clickhouse import connect
from schemas.settings import SinkSettings
from sinks.clickhouse.cluster import (
    LOCAL_SUFFIX,
    SESSION_SETTINGS,
    SHARDING_KEYS,
    UnsupportedStatement,
    alter_commands,
    migrations_table,
    on_cluster,
)
from sinks.clickhouse.ddl import _statements, apply_migrations, migrations
from sinks.clickhouse.retention import apply_retention, canonical_ttl, current_ttl
from sinks.clickhouse.rows import EVENT_COLUMNS
from sinks.clickhouse.writer import BatchWriter
from tests.sinks.clickhouse.test_migrations import AGGREGATES, EVENTS, check_moved_forward

CLUSTER = "cosnap"
_ON_CLUSTER = f" ON CLUSTER {CLUSTER}"
_REPLICATED = re.compile(r"Replicated(\w+)\('[^']*', '[^']*'(?:, ([^()]*))?\)")


def every_statement() -> list[str]:
    return [statement for _, _, sql in migrations() for statement in _statements(sql)]


def single_node(statement: str) -> str:
    """What chDB can run of a cluster statement: no ON CLUSTER, the local table unreplicated."""

    def unreplicated(engine: re.Match[str]) -> str:
        name, arguments = engine.groups()
        return f"{name}({arguments})" if arguments else name

    return _REPLICATED.sub(unreplicated, statement.replace(_ON_CLUSTER, ""))


def test_unset_is_todays_ddl() -> None:
    for statement in every_statement():
        assert on_cluster(statement, "") == [statement]
    assert migrations_table("") == (
        "CREATE TABLE IF NOT EXISTS {database}.schema_migrations "
        "(version UInt32, name String, applied_at DateTime DEFAULT now()) ENGINE = MergeTree ORDER BY version"
    )


@pytest.fixture(scope="module")
def chdb(tmp_path_factory: pytest.TempPathFactory) -> Client:
    return connect(f"chdb://{tmp_path_factory.mktemp('chdb')}")


def formatted(client: Client, sql: str) -> str:
    return str(client.query("SELECT formatQuery({sql:String})", parameters={"sql": sql}).result_rows[0][0])


def test_every_cluster_statement_parses_and_keeps_the_tables(chdb: Client) -> None:
    rewritten = 0
    for statement in every_statement():
        today = formatted(chdb, statement.replace("{database}", "metrics"))
        for made in on_cluster(statement, CLUSTER):
            text = formatted(chdb, made.replace("{database}", "metrics"))  # raises if it does not parse
            assert _ON_CLUSTER in text or made.startswith("INSERT INTO")
            is_local = f"{LOCAL_SUFFIX} ON CLUSTER" in made.split("\n")[0]
            if is_local and made.startswith(("CREATE TABLE", "ALTER TABLE")):
                assert single_node(text).replace(f"{LOCAL_SUFFIX}", "") == today
                rewritten += 1
            if "ENGINE = Replicated" in made:
                assert "('/clickhouse/tables/{uuid}/{shard}', '{replica}'" in text
    assert rewritten == 13  # 7 tables and the copy of events in 0004, 5 ALTERs
    text = formatted(chdb, migrations_table(CLUSTER).replace("{database}", "metrics"))
    assert "ReplicatedMergeTree('/clickhouse/tables/{uuid}/migrations', '{shard}-{replica}')" in text


def test_the_sharding_keys_hash_columns_of_the_replacing_keys(chdb: Client) -> None:
    apply_migrations(chdb, "keys")
    sorting = dict(
        chdb.query("SELECT name, sorting_key FROM system.tables WHERE database = 'keys'").result_rows
    )
    for table, key in SHARDING_KEYS.items():
        hashed = {column.strip() for column in key.removeprefix("cityHash64(").removesuffix(")").split(",")}
        ordered = [column.strip() for column in str(sorting[table]).split(",")]
        assert hashed <= set(ordered), table
    # The parts of a window (on-time, corrections) and their rewrites: one shard per window.
    key = SHARDING_KEYS["aggregates"].removeprefix("cityHash64(").removesuffix(")")
    assert f"{key}, part" == sorting["aggregates"]
    # The project alone would put a one-app deployment on one shard.
    assert not any(key == "cityHash64(project)" for key in SHARDING_KEYS.values())


CONFIG = """<clickhouse>
  <tcp_port>{port}</tcp_port>
  <remote_servers><{cluster}><shard><replica><host>localhost</host><port>{port}</port></replica></shard></{cluster}></remote_servers>
  <macros><shard>01</shard><replica>r1</replica></macros>
  <zookeeper><implementation>testkeeper</implementation></zookeeper>
</clickhouse>
"""


class SingleNode:
    """A chDB client that runs each cluster statement as `single_node` has it."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def command(self, sql: str, settings: dict[str, str] | None = None) -> Any:
        return self.client.command(single_node(sql), settings=settings)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def replicated_tables(client: Client) -> tuple[dict[str, tuple[str, str]], dict[str, tuple[str, str]]]:
    """Each replicated local table the cluster migrations create, made by the engine with an
    explicit UUID (without ON CLUSTER, chDB takes `{uuid}` only so): the Keeper path and replica
    name expected of each, and those system.replicas reports."""
    client.command("CREATE DATABASE IF NOT EXISTS keeper")
    creates = [migrations_table(CLUSTER)] + [
        made
        for statement in every_statement()
        for made in on_cluster(statement, CLUSTER)
        if "ENGINE = Replicated" in made
    ]
    expected = {}
    for made in creates:
        table = made.split("{database}.", 1)[1].split(" ", 1)[0]
        table_uuid = str(uuid.uuid4())
        named = made.replace(_ON_CLUSTER, f" UUID '{table_uuid}'", 1)
        client.command(named.replace("{database}", "keeper"))
        if table == "schema_migrations":
            expected[table] = (f"/clickhouse/tables/{table_uuid}/migrations", "01-r1")
        else:
            expected[table] = (f"/clickhouse/tables/{table_uuid}/01", "r1")
    found = client.query(
        "SELECT table, zookeeper_path, replica_name FROM system.replicas WHERE database = 'keeper'"
    ).result_rows
    return expected, {table: (path, replica) for table, path, replica in found}


def on_chdb_cluster(data: str, config: str) -> None:
    """Run in a process of its own (chDB's configuration is the process's first engine's)."""
    try:
        # The sink's session on a cluster (service.open_store), through the same client.
        client = clickhouse_connect.get_client(
            dsn=f"chdb://{data}", chdb_options={"config-file": config}, settings=SESSION_SETTINGS
        )
        assert client.query("SELECT getSetting('insert_quorum_parallel')").result_rows == [(False,)]
        assert client.query("SELECT is_local FROM system.clusters WHERE cluster = 'cosnap'").result_rows == [
            (1,)
        ]
        expected, found = replicated_tables(client)
        assert found == expected and len(found) == 9, (found, expected)

        cluster = cast(Client, SingleNode(client))
        assert len(apply_migrations(cluster, "m", until=3, cluster=CLUSTER)) == 3
        client.command(EVENTS)
        client.command(AGGREGATES)
        assert apply_migrations(cluster, "m", cluster=CLUSTER)[0] == "0004_late_corrections.sql"
        check_moved_forward(client)
        engines = dict(
            client.query("SELECT name, engine FROM system.tables WHERE database = 'm'").result_rows
        )
        for table in SHARDING_KEYS:
            assert (engines[table], engines[f"{table}{LOCAL_SUFFIX}"]) == (
                "Distributed",
                "ReplacingMergeTree",
            )
        assert engines["windows"] == "View" and "events_0003" not in engines and "events_0004" not in engines

        # The sink's writer through the Distributed table; a batch retried whole and a
        # redelivered copy (a higher offset) collapse to the first copy with FINAL.
        row = {
            "event_id": "e1",
            "project": "p",
            "type": "feature",
            "timestamp": "2026-12-01T00:00:00Z",
            "received_at": "2026-12-01T00:00:01Z",
            "feature": "f",
            "action": "a",
            "kafka_partition": 1,
        }
        writer = BatchWriter(client, "m.events", EVENT_COLUMNS)
        for offset in (10, 10, 11):
            writer.add([orjson.dumps(row | {"kafka_offset": offset})], 1, offset)
            assert writer.flush() == []
        finals = client.query("SELECT kafka_offset FROM m.events FINAL WHERE event_id = 'e1'").result_rows
        assert finals == [(10,)], finals

        settings = SinkSettings(
            clickhouse_url="http://127.0.0.1:8123",
            clickhouse_database="m",
            clickhouse_cluster=CLUSTER,
            retention_events_days=30,
        )
        assert apply_retention(cluster, settings) == ["events", "late_events"]
        thirty_days = canonical_ttl(client, "m", "events", "timestamp + INTERVAL 30 DAY")
        assert current_ttl(client, "m", "events_local") == thirty_days != ""
        assert apply_retention(cluster, settings) == []  # as the settings say now
        print("cluster ok", flush=True)
    except BaseException:
        traceback.print_exc()
        sys.stdout.flush()
        os._exit(1)
    # chDB with the in-memory Keeper aborts in its exit handlers: skip them.
    os._exit(0)


def test_the_cluster_ddl_runs_on_chdb(tmp_path: Path) -> None:
    config = tmp_path / "config.xml"
    # The port is ClickHouse's own (chDB listens on none): it makes the shard local.
    config.write_text(CONFIG.format(port=free_port(), cluster=CLUSTER))
    run = f"on_chdb_cluster({str(tmp_path / 'chdb')!r}, {str(config)!r})"
    code = f"from tests.sinks.clickhouse.test_cluster import on_chdb_cluster; {run}"
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert done.returncode == 0 and "cluster ok" in done.stdout, done.stdout + done.stderr[-3000:]


def test_the_setting_needs_a_server_and_a_cluster_name() -> None:
    assert SinkSettings().clickhouse_cluster == ""
    with pytest.raises(ValueError, match="needs a ClickHouse server"):
        SinkSettings(clickhouse_cluster=CLUSTER)  # chDB in the data directory
    with pytest.raises(ValueError, match="clickhouse_cluster"):
        SinkSettings(clickhouse_url="http://127.0.0.1:8123", clickhouse_cluster="a; DROP")


def test_a_statement_without_a_rule_is_refused() -> None:
    for statement in (
        "CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.mv TO {database}.events AS SELECT 1",
        "CREATE TABLE IF NOT EXISTS {database}.sessions (id String) ENGINE = ReplacingMergeTree ORDER BY id",
        "CREATE TABLE IF NOT EXISTS {database}.events (id String) ENGINE = Memory",
        "TRUNCATE TABLE {database}.events",
    ):
        with pytest.raises(UnsupportedStatement):
            on_cluster(statement, CLUSTER)


def test_an_alter_splits_into_commands_not_ttl_rules() -> None:
    ttl = "MODIFY TTL a + INTERVAL 7 DAY DELETE WHERE g = '10s', a + INTERVAL 90 DAY DELETE WHERE g = '1,m'"
    commands = alter_commands(f"ADD COLUMN x Map(String, UInt8) COMMENT 'a, b' AFTER y, {ttl}")
    assert commands == ["ADD COLUMN x Map(String, UInt8) COMMENT 'a, b' AFTER y", ttl]
    assert on_cluster(f"ALTER TABLE {{database}}.aggregates ADD COLUMN x UInt8, {ttl}", CLUSTER) == [
        f"ALTER TABLE {{database}}.aggregates_local ON CLUSTER {CLUSTER} ADD COLUMN x UInt8, {ttl}",
        f"ALTER TABLE {{database}}.aggregates ON CLUSTER {CLUSTER} ADD COLUMN x UInt8",
    ]
