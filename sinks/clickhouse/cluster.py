"""The migrations on a ClickHouse cluster (`COSNAP_CLICKHOUSE_CLUSTER`, docs/reference.md,
"ClickHouse on a cluster").

Each statement of `migrations/` is rewritten, not copied: a table becomes a replicated local
table (`<name>_local`, `Replicated<engine>` with the same columns, ORDER BY, PARTITION BY, TTL and
version column) on every node, and a `Distributed` table with the public name in front of it,
which is what the sink inserts into and analysts read. Every statement runs `ON CLUSTER`. With no
cluster named, a statement is returned as it is: a single server or chDB gets today's DDL.

Replicas find each other in ClickHouse Keeper under `/clickhouse/tables/{uuid}/{shard}` (the
path ClickHouse itself defaults to; `{uuid}` is the table's, the same on every node of an `ON
CLUSTER` query, so a table rebuilt under a name used before never meets its predecessor's path)
and name themselves `{replica}`: the `<macros>` of each server's configuration.
"""

from __future__ import annotations

import re

LOCAL_SUFFIX = "_local"
REPLICA_PATH = "/clickhouse/tables/{uuid}/{shard}"
REPLICA_NAME = "{replica}"
# The migrations record: one replication group over every node of the cluster (no `{shard}` in
# its path), so that whichever node the sink connects to knows what was applied.
MIGRATIONS_PATH = "/clickhouse/tables/{uuid}/migrations"
MIGRATIONS_REPLICA = "{shard}-{replica}"

# Which shard a row goes to. A ReplacingMergeTree collapses only the copies of a row that sit on
# the same shard, so each key is a hash of columns of the table's ORDER BY that every copy of a
# row shares: the copies of an event (a retry, a redelivery) by its id, the parts and rewrites of
# a window by the window (its ORDER BY without `part`), an alert's whole history by its
# fingerprint. None is the project alone: one app is one project, and would fill one shard.
SHARDING_KEYS = {
    "events": "cityHash64(event_id)",
    "late_events": "cityHash64(event_id)",
    "aggregates": "cityHash64(project, type, name, series_id, granularity, window_start)",
    "alerts": "cityHash64(fingerprint)",
    "alert_deliveries": "cityHash64(fingerprint)",
    "alert_acks": "cityHash64(fingerprint)",
    "traits": "cityHash64(message_id)",
}

# The sink's session on a cluster. Inserts into a Distributed table return once each shard has
# the rows (not once the node that took them queued them on its own disk to forward later), on a
# majority of the shard's replicas, one quorum insert at a time per table and shard; reads see
# every quorum-written row (a replica lacking one refuses the read rather than answer without
# it). So the sink commits Kafka offsets only for rows that survive the loss of a node, and the
# late corrections' look-up of first copies (corrections.py) sees every copy stored before it.
SESSION_SETTINGS = {
    "distributed_foreground_insert": "1",
    "insert_quorum": "auto",
    "insert_quorum_parallel": "0",
    "select_sequential_consistency": "1",
}

_NAME = r"\{database\}\.(\w+)"
_CREATE_TABLE = re.compile(
    rf"^CREATE TABLE IF NOT EXISTS {_NAME}(\s*\(.*\)\s*)ENGINE = (\w+)(?:\(([^()]*)\))?(.*)$", re.S
)
_CREATE_VIEW = re.compile(rf"^(CREATE VIEW IF NOT EXISTS {_NAME})( AS\b.*)$", re.S)
_ALTER = re.compile(rf"^ALTER TABLE {_NAME}\s+(.*)$", re.S)
_DROP = re.compile(rf"^DROP TABLE IF EXISTS {_NAME}$")
_RENAME = re.compile(r"^RENAME TABLE (.*)$", re.S)
_RENAMED = re.compile(rf"^{_NAME} TO {_NAME}$")
_INSERT_SELECT = re.compile(rf"^INSERT INTO {_NAME}\b.*\bSELECT\b", re.S)
# An ALTER's commands, each starting with one of these words; a command that changes columns
# applies to the Distributed table too, the others (ORDER BY, TTL) to the local table alone.
_COMMAND = re.compile(r"^(ADD|DROP|MODIFY|RENAME|COMMENT|CLEAR|MATERIALIZE|REMOVE)\b")
_COLUMN_COMMAND = re.compile(r"^(ADD|DROP|MODIFY|RENAME|COMMENT) COLUMN\b")


class UnsupportedStatement(ValueError):
    """A migration statement the cluster rewrite has no rule for: a new migration needs one."""


def base_name(table: str) -> str:
    """The table a temporary copy (`events_0004`) stands for, whose sharding key it takes."""
    return re.sub(r"_\d{4}$", "", table)


def sharding_key(table: str) -> str:
    try:
        return SHARDING_KEYS[base_name(table)]
    except KeyError:
        raise UnsupportedStatement(f"no sharding key for table {table}") from None


def distributed(table: str, cluster: str) -> str:
    """The Distributed table `table` in front of its local table on every node."""
    return (
        f"CREATE TABLE IF NOT EXISTS {{database}}.{table} ON CLUSTER {cluster} "
        f"AS {{database}}.{table}{LOCAL_SUFFIX} "
        f"ENGINE = Distributed({cluster}, {{database}}, {table}{LOCAL_SUFFIX}, {sharding_key(table)})"
    )


def replicated_engine(
    engine: str, arguments: str | None, path: str = REPLICA_PATH, replica: str = REPLICA_NAME
) -> str:
    """`Replicated<engine>` with the Keeper path and replica name before the engine's own arguments."""
    if not engine.endswith("MergeTree") or engine.startswith("Replicated"):
        raise UnsupportedStatement(f"no replicated form of engine {engine}")
    own = f", {arguments}" if arguments else ""
    return f"Replicated{engine}('{path}', '{replica}'{own})"


def alter_commands(commands: str) -> list[str]:
    """The commands of an ALTER, split at the commas between them (not those inside parentheses,
    quotes or a TTL's list of rules)."""
    pieces: list[str] = []
    depth, quoted, start = 0, False, 0
    for index, char in enumerate(commands):
        if char == "'":
            quoted = not quoted
        elif not quoted and char in "([":
            depth += 1
        elif not quoted and char in ")]":
            depth -= 1
        elif not quoted and depth == 0 and char == ",":
            pieces.append(commands[start:index])
            start = index + 1
    pieces.append(commands[start:])
    out: list[str] = []
    for piece in (piece.strip() for piece in pieces):
        if _COMMAND.match(piece) or not out:
            out.append(piece)
        else:  # the next rule of a TTL
            out[-1] = f"{out[-1]}, {piece}"
    return out


def on_cluster(statement: str, cluster: str) -> list[str]:
    """The statements that do on `cluster` what `statement` (a migration's, `{database}` not yet
    substituted) does on one server; `[statement]` itself when `cluster` is empty. Raises
    UnsupportedStatement for a statement of a kind no rule covers."""
    if not cluster:
        return [statement]
    if match := _CREATE_TABLE.match(statement):
        table, columns, engine, arguments, clauses = match.groups()
        local = (
            f"CREATE TABLE IF NOT EXISTS {{database}}.{table}{LOCAL_SUFFIX} ON CLUSTER {cluster}{columns}"
            f"ENGINE = {replicated_engine(engine, arguments)}{clauses}"
        )
        return [local, distributed(table, cluster)]
    if match := _CREATE_VIEW.match(statement):
        head, _, rest = match.groups()
        return [f"{head} ON CLUSTER {cluster}{rest}"]
    if match := _ALTER.match(statement):
        table, commands = match.groups()
        split = alter_commands(commands)
        out = [f"ALTER TABLE {{database}}.{table}{LOCAL_SUFFIX} ON CLUSTER {cluster} {', '.join(split)}"]
        if columns := [command for command in split if _COLUMN_COMMAND.match(command)]:
            out.append(f"ALTER TABLE {{database}}.{table} ON CLUSTER {cluster} {', '.join(columns)}")
        return out
    if match := _DROP.match(statement):
        table = match.group(1)
        return [
            f"DROP TABLE IF EXISTS {{database}}.{name} ON CLUSTER {cluster} SYNC"
            for name in (table, f"{table}{LOCAL_SUFFIX}")
        ]
    if match := _RENAME.match(statement):
        # The local tables are renamed; a Distributed table names its local table in its engine,
        # so each is dropped and made again in front of the local table that now has its name.
        pairs = []
        for renamed in match.group(1).split(","):
            if not (pair := _RENAMED.match(renamed.strip())):
                raise UnsupportedStatement(statement)
            pairs.append(pair.groups())
        locals_ = ", ".join(
            f"{{database}}.{old}{LOCAL_SUFFIX} TO {{database}}.{new}{LOCAL_SUFFIX}" for old, new in pairs
        )
        return [
            f"RENAME TABLE {locals_} ON CLUSTER {cluster}",
            *(f"DROP TABLE IF EXISTS {{database}}.{old} ON CLUSTER {cluster} SYNC" for old, _ in pairs),
            *(distributed(new, cluster) for _, new in pairs),
        ]
    if _INSERT_SELECT.match(statement):
        return [statement]  # from Distributed to Distributed: every shard's rows, sharded again
    raise UnsupportedStatement(statement)


def migrations_table(cluster: str) -> str:
    """The DDL of `schema_migrations` (`{database}` not yet substituted)."""
    table = "CREATE TABLE IF NOT EXISTS {database}.schema_migrations"
    columns = "(version UInt32, name String, applied_at DateTime DEFAULT now())"
    if not cluster:
        return f"{table} {columns} ENGINE = MergeTree ORDER BY version"
    engine = replicated_engine("MergeTree", None, MIGRATIONS_PATH, MIGRATIONS_REPLICA)
    return f"{table} ON CLUSTER {cluster} {columns} ENGINE = {engine} ORDER BY version"
