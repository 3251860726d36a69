"""The versioned DDL of the tables the sink writes and analysts read.

Migrations are `migrations/NNNN_name.sql`, applied in order at sink start-up and recorded in
`<database>.schema_migrations`; docker-compose and the embedded path run the same files. On a
cluster each statement is rewritten for it first (sinks/clickhouse/cluster.py).
"""

from __future__ import annotations

import re
from importlib import resources

from clickhouse_connect.driver.client import Client

from sinks.clickhouse.cluster import SESSION_SETTINGS, migrations_table, on_cluster

_MIGRATION = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def migrations() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every migration shipped with the package, in order."""
    folder = resources.files("sinks.clickhouse").joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        match = _MIGRATION.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text()))
    return sorted(found)


def _statements(sql: str) -> list[str]:
    lines = [line for line in sql.splitlines() if not line.lstrip().startswith("--")]
    return [stmt.strip() for stmt in "\n".join(lines).split(";") if stmt.strip()]


def apply_migrations(client: Client, database: str, until: int | None = None, cluster: str = "") -> list[str]:
    """Create `database` and apply the migrations it lacks (up to version `until`, all when
    None); return the names applied. Each statement of a migration may run again after a crash
    part-way through it: the migration is recorded only once all of them ran. With `cluster`
    named, every statement runs on each of its nodes (`ON CLUSTER`, waiting for them all)."""
    settings = SESSION_SETTINGS if cluster else {}
    client.command(
        f"CREATE DATABASE IF NOT EXISTS {database}" + (f" ON CLUSTER {cluster}" if cluster else "")
    )
    client.command(migrations_table(cluster).replace("{database}", database))
    # `database` matches the identifier pattern of the settings, so splicing it is safe.
    versions = client.query(f"SELECT version FROM {database}.schema_migrations")  # noqa: S608
    done = {row[0] for row in versions.result_rows}
    applied = []
    for version, name, sql in migrations():
        if version in done or (until is not None and version > until):
            continue
        for statement in _statements(sql):
            for command in on_cluster(statement, cluster):
                client.command(command.replace("{database}", database), settings=settings)
        client.insert(
            f"{database}.schema_migrations",
            [[version, name]],
            column_names=["version", "name"],
            settings=settings,
        )
        applied.append(name)
    return applied
