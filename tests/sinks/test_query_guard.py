"""The read-only guard of the query path (ClickHouse's readonly=1 is the second line)."""

from __future__ import annotations

import pytest

from sinks.clickhouse import _statements, migrations
from sinks.errors import QueryRefused
from sinks.query import read_only_statement


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1",
        "  -- a comment\n select count() FROM metrics.events;",
        "WITH x AS (SELECT 1) SELECT * FROM x",
        "SHOW TABLES FROM metrics",
        "DESCRIBE TABLE metrics.events",
        "(SELECT 1) UNION ALL (SELECT 2)",
        "SELECT ';' AS semicolon",
    ],
)
def test_reads_pass(sql: str) -> None:
    assert read_only_statement(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO metrics.events (event_id) VALUES ('x')",
        "DROP TABLE metrics.events",
        "/* SELECT */ ALTER TABLE metrics.events DELETE WHERE 1",
        "SELECT 1; DROP TABLE metrics.events",
        "SET readonly = 0",
    ],
)
def test_writes_are_refused(sql: str) -> None:
    with pytest.raises(QueryRefused):
        read_only_statement(sql)


def test_migrations_are_numbered_and_split_into_statements() -> None:
    found = migrations()
    assert [v for v, _, _ in found] == sorted({v for v, _, _ in found})
    assert found[0][0] == 1
    statements = _statements(found[0][2])
    assert len(statements) == 2 and all(s.startswith("CREATE TABLE") for s in statements)
