"""How long the sink's tables keep rows: a TTL per table, from `COSNAP_RETENTION_*_DAYS`
(docs/reference.md, "Retention"). Migration 0006 sets the defaults; at start-up the sink
replaces a table's TTL only when the configured one differs from the table's, so that a restart
with the same settings alters nothing.

A TTL that changes is materialized (ClickHouse's default): the table's parts are rewritten by a
mutation in the background, so that rows already stored follow the new TTL, not only new parts.
Left unmaterialized, a part keeps the expiry times computed under the old TTL, and a merge drops
none of its rows until those are reached (docs/findings.md). Expired rows otherwise go when
ClickHouse merges the parts holding them (`OPTIMIZE TABLE ... FINAL` forces it).
"""

from __future__ import annotations

import logging

from clickhouse_connect.driver.client import Client

from schemas.settings import SinkSettings
from sinks.clickhouse.cluster import LOCAL_SUFFIX, on_cluster

log = logging.getLogger("cosnap.sink")


def wanted_ttls(settings: SinkSettings) -> dict[str, str]:
    """Each table's TTL expression under `settings` ("" = rows kept forever): raw and late events
    by event time, windows by their start, one rule per granularity."""
    events = (
        f"timestamp + INTERVAL {settings.retention_events_days} DAY" if settings.retention_events_days else ""
    )
    windows = [
        f"window_start + INTERVAL {days} DAY DELETE WHERE granularity = '{granularity}'"
        for granularity, days in (
            ("10s", settings.retention_10s_days),
            ("1m", settings.retention_1m_days),
            ("1h", settings.retention_1h_days),
        )
        if days
    ]
    return {"events": events, "late_events": events, "aggregates": ", ".join(windows)}


def current_ttl(client: Client, database: str, table: str) -> str:
    """The table's TTL as ClickHouse states it in `engine_full` ("" without one). On a cluster,
    pass the local table: a Distributed table has none."""
    engine = client.query(
        "SELECT engine_full FROM system.tables WHERE database = {db:String} AND name = {table:String}",
        parameters={"db": database, "table": table},
    ).result_rows[0][0]
    _, found, rest = str(engine).partition(" TTL ")
    return rest.partition(" SETTINGS ")[0] if found else ""


def canonical_ttl(client: Client, database: str, table: str, ttl: str) -> str:
    """`ttl` as ClickHouse would state it in `engine_full` (its formatter writes both)."""
    if not ttl:
        return ""
    formatted = client.query(
        "SELECT formatQuerySingleLine({sql:String})",
        parameters={"sql": f"ALTER TABLE {database}.{table} MODIFY TTL {ttl}"},
    ).result_rows[0][0]
    return str(formatted).partition("MODIFY TTL ")[2].removesuffix(")")


def apply_retention(client: Client, settings: SinkSettings) -> list[str]:
    """Give each table the TTL `settings` ask for where it has another; return the tables altered.
    Called at sink start, after the migrations; blocks for one ALTER per table changed (on a
    cluster, of the local tables on every node)."""
    database, cluster = settings.clickhouse_database, settings.clickhouse_cluster
    altered = []
    for table, ttl in wanted_ttls(settings).items():
        stored = f"{table}{LOCAL_SUFFIX}" if cluster else table
        if current_ttl(client, database, stored) == canonical_ttl(client, database, table, ttl):
            continue
        # `database` matches the identifier pattern of the settings and `ttl` is made of integers.
        change = f"MODIFY TTL {ttl}" if ttl else "REMOVE TTL"
        for statement in on_cluster(f"ALTER TABLE {{database}}.{table} {change}", cluster):
            client.command(statement.replace("{database}", database))
        log.info("retention of %s.%s: %s", database, table, ttl or "forever")
        altered.append(table)
    return altered
