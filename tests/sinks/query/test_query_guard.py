"""The read guard (`sinks.query.sql_guard`): what passes, what is refused and why, and that its
tokenizer splits statements where the engine's own parser does (a property test against chDB's
`classify_query`). The session's readonly=1 and the limits are tested in test_reader.py, the
whole path through `/v1/query` and the CLI in test_query_service.py."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sinks.clickhouse.ddl import _statements, migrations
from sinks.query.errors import QueryRefused
from sinks.query.sql_guard import read_only_statement
from sinks.query.sql_lexer import Kind, tokenize
from tests.ingest.contract_strategies import examples

READS = [
    "SELECT 1",
    "  -- a comment\n select count() FROM metrics.events;",
    "WITH x AS (SELECT 1) SELECT * FROM x",
    "SHOW TABLES FROM metrics",
    "SHOW DATABASES",
    "SHOW CREATE TABLE metrics.events",
    "DESCRIBE TABLE metrics.events",
    "DESC metrics.events",
    "EXISTS TABLE metrics.events",
    "EXPLAIN SELECT 1",
    "(SELECT 1) UNION ALL (SELECT 2)",
    "SELECT ';' AS semicolon",
    "SELECT 'it''s; fine', \"odd;name\", `x;y` FROM t",
    "SELECT $$; DROP TABLE t$$, $tag$ ; $tag$",
    "SELECT ‘a; b’, “c;d” FROM t",
    "SELECT 1 -- ; DROP TABLE t",
    "SELECT 1 // ; DROP TABLE t",
    "SELECT 1 # ; DROP TABLE t",
    "SELECT 1 /* ; /* nested ; */ ; */",
    "SELECT 1e-5, 0x1F, 1_000, x'41', .5",
    "SELECT format('{} {}', 1, 2), 1 AS format",
    "SELECT count() FROM numbers(10)",
    "SELECT * FROM generateRandom('a UInt8') LIMIT 3",
    "SELECT * FROM values('a UInt8', 1, 2)",
    "SELECT name FROM system.columns WHERE database = 'metrics'",
    "SELECT * FROM system.settings WHERE name = 'readonly'",
    "SELECT * FROM information_schema.tables",
    'SELECT "fi""le"(\'x\')',  # the name is `fi"le`, which the engine does not know
    "SELECT x.1.1 FROM (SELECT tuple(tuple(1)) AS x)",
    "SELECT 'a\\'; DROP TABLE metrics.events; SELECT 1 -- '",  # one string: the quote is escaped
]


@pytest.mark.parametrize("sql", READS)
def test_reads_pass(sql: str) -> None:
    statement = read_only_statement(sql)
    assert statement and not statement.endswith(";")


# (SQL, what the refusal must name). The first three are the exploits of issue 19.
REFUSED = [
    ("SELECT '--'; CREATE TABLE metrics.x (a UInt8) ENGINE = Memory; SELECT 1", "more than one statement"),
    (
        "SELECT '--'; SELECT * FROM file('/etc/passwd', 'LineAsString'); SELECT 1",
        "more than one statement",
    ),
    ("SELECT 1 INTO OUTFILE '/tmp/cosnap-out' APPEND", "INTO OUTFILE"),
    # comment and quote tricks
    ("SELECT \"'\"; DROP TABLE metrics.events; SELECT '\"'", "more than one statement"),
    ("SELECT `'`; DROP TABLE metrics.events; SELECT '`'", "more than one statement"),
    ("SELECT 'a\\\\'; DROP TABLE metrics.events; SELECT '--'", "more than one statement"),
    ("SELECT 'it''s'; DROP TABLE metrics.events", "more than one statement"),
    ("SELECT 1e--5; DROP TABLE metrics.events", "more than one statement"),
    ("SELECT 1 /* /* */ */; DROP TABLE metrics.events", "more than one statement"),
    ("SELECT 1 /* unclosed ; DROP TABLE metrics.events", "does not parse"),
    ("SELECT 1 #x; DROP TABLE metrics.events", "does not parse"),
    ("SELECT $a$ ; $b$; DROP TABLE metrics.events", "more than one statement"),
    ("SELECT ‘;’; DROP TABLE metrics.events", "more than one statement"),
    ("SELECT 1 // x\n; DROP TABLE metrics.events", "more than one statement"),
    ("SELECT 1;;", "more than one statement"),
    ("SELECT 1 PARALLEL WITH SELECT 2", "PARALLEL WITH"),
    # not reads
    ("INSERT INTO metrics.events (event_id) VALUES ('x')", "INSERT is not a read statement"),
    ("DROP TABLE metrics.events", "DROP is not a read statement"),
    ("/* SELECT */ ALTER TABLE metrics.events DELETE WHERE 1", "ALTER is not a read statement"),
    ("SET readonly = 0", "SET is not a read statement"),
    ("KILL QUERY WHERE 1", "KILL is not a read statement"),
    ("SYSTEM SHUTDOWN", "SYSTEM is not a read statement"),
    ("(INSERT INTO t VALUES (1))", "INSERT is not a read statement"),
    ("SHOW PROCESSLIST", "SHOW PROCESSLIST"),
    ("SHOW GRANTS", "SHOW GRANTS"),
    ("SHOW CREATE USER default", "SHOW CREATE USER"),
    ("", "empty"),
    (" ; ", "empty"),
    # writing to files, formats, settings
    ("SELECT 1 INTO OUTFILE '/tmp/x' FORMAT CSV", "INTO OUTFILE"),
    ("SELECT 1 FORMAT JSONEachRow", "FORMAT"),
    ("SELECT 1\\G", "\\G"),
    ("SELECT 1 SETTINGS readonly = 0", "SETTINGS"),
    ("SELECT 1 SETTINGS max_execution_time = 0", "SETTINGS"),
    ("SELECT * FROM (SELECT 1 SETTINGS max_memory_usage = 0)", "SETTINGS"),
    ("EXPLAIN AST SELECT 1 SETTINGS readonly = 0", "SETTINGS"),
    # table functions and functions that reach the host or the network
    ("SELECT * FROM file('/etc/passwd', 'LineAsString')", "file()"),
    ("SELECT file('/etc/passwd')", "file()"),
    ("SELECT 1 IN file('/etc/passwd', 'LineAsString')", "file()"),
    ("DESC file('/etc/passwd', 'LineAsString')", "file()"),
    ("SELECT * FROM `file`('/etc/passwd', 'LineAsString')", "file()"),
    ("SELECT * FROM \"file\" ('/etc/passwd')", "file()"),
    ("SELECT * FROM “file”('/etc/passwd')", "file()"),
    ("SELECT * FROM file/* gap */('/etc/passwd')", "file()"),
    ("SELECT * FROM `\\x66ile`('/etc/passwd')", "backslash escape"),
    ("SELECT * FROM url('http://169.254.169.254/', 'LineAsString')", "url()"),
    ("SELECT * FROM URL('http://127.0.0.1/')", "URL()"),
    ("SELECT * FROM remote('127.0.0.1', system.one)", "remote()"),
    ("SELECT * FROM remoteSecure('127.0.0.1', system.one)", "remoteSecure()"),
    ("SELECT * FROM s3('https://bucket/x.csv')", "s3()"),
    ("SELECT * FROM hdfs('hdfs://x/y', 'TSV', 'a UInt8')", "hdfs()"),
    ("SELECT * FROM mysql('h:3306', 'db', 't', 'u', 'p')", "mysql()"),
    ("SELECT * FROM postgresql('h:5432', 'db', 't', 'u', 'p')", "postgresql()"),
    ("SELECT * FROM jdbc('jdbc:x', 't')", "jdbc()"),
    ("SELECT * FROM odbc('DSN=x', 't')", "odbc()"),
    ("SELECT * FROM executable('sh', 'TSV', 'a String')", "executable()"),
    ("SELECT * FROM input('a UInt8')", "input()"),
    ("SELECT * FROM cluster('default', system.one)", "cluster()"),
    ("SELECT * FROM sqlite('/tmp/x.db', 't')", "sqlite()"),
    ("SELECT * FROM Python(secrets)", "Python()"),
    ("SELECT * FROM merge('system', '^processes$')", "merge()"),
    ("SELECT * FROM view(SELECT 1)", "view()"),
    ("SELECT * FROM dictionary('d')", "dictionary()"),
    ("SELECT hostName(), getServerSetting('path')", "hostName()"),
    ("SELECT filesystemAvailable()", "filesystemAvailable()"),
    # system tables that expose the host, other sessions or the server
    ("SELECT * FROM system.processes", "system.processes"),
    ("SELECT * FROM system.disks", "system.disks"),
    ("SELECT query FROM system.query_log", "system.query_log"),
    ("SELECT * FROM system.server_settings", "system.server_settings"),
    ("SELECT data_paths FROM system.tables", "system.tables"),
    ('SELECT * FROM `system`."users"', "system.users"),
    ("SELECT * FROM system . /* gap */ parts", "system.parts"),
    ("DESCRIBE system.stack_trace", "system.stack_trace"),
]


@pytest.mark.parametrize(("sql", "named"), REFUSED)
def test_refusals_name_what_was_refused(sql: str, named: str) -> None:
    with pytest.raises(QueryRefused, match="refused") as refused:
        read_only_statement(sql)
    assert named in str(refused.value)


def test_the_lexer_follows_the_engine_on_numbers_comments_and_heredocs() -> None:
    kinds = [(t.kind, t.text) for t in tokenize("1e--5 $a$x$a$ /* /* */ */ .5 x.1.1") if t.significant]
    assert kinds == [
        (Kind.NUMBER, "1e-"),
        (Kind.OPERATOR, "-"),
        (Kind.NUMBER, "5"),
        (Kind.HEREDOC, "$a$x$a$"),
        (Kind.NUMBER, ".5"),
        (Kind.WORD, "x"),
        (Kind.DOT, "."),
        (Kind.NUMBER, "1"),
        (Kind.DOT, "."),
        (Kind.NUMBER, "1"),
    ]


# Pieces whose meaning depends on the lexer getting quotes, escapes, comments and numbers right.
_PIECES = [
    "1", "x", "'", '"', "`", "\\", ";", ";", "--", "//", "# ", "#", "/*", "*/", "$", "$$", "$t$", "\n",
    " ", "e", "1e-", "0x", "x'", "‘", "’", "“", "”", "''", '""', "DROP TABLE metrics.events", "(", ")",
    ".", "-", "!", "SELECT", "'a;b'", "/* ; */", "$$;$$",
]  # fmt: skip


@pytest.fixture(scope="module")
def engine() -> Iterator[Any]:
    """chDB in memory, writable: the guard alone stands between these tests' SQL and a write."""
    import chdb

    connection = chdb.connect(":memory:")
    connection.query("SET max_execution_time = 5")
    yield connection
    connection.close()


def _passes(sql: str) -> str | None:
    try:
        return read_only_statement(sql)
    except QueryRefused:
        return None


@settings(
    max_examples=examples(2000), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(pieces=st.lists(st.sampled_from(_PIECES), max_size=10))
def test_whatever_the_guard_passes_runs_as_one_statement(engine: Any, pieces: list[str]) -> None:
    sql = "SELECT 1 " + "".join(pieces) + "; CREATE TABLE canary (a UInt8) ENGINE = Memory"
    statement = _passes(sql)
    if statement is not None:
        with contextlib.suppress(Exception):  # most of these are not valid SQL; only a write matters
            engine.query(statement, "TabSeparated")
    created = engine.query("EXISTS TABLE canary", "TabSeparated").bytes().strip()
    assert created == b"0", sql


@settings(
    max_examples=examples(2000), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(pieces=st.lists(st.sampled_from(_PIECES), max_size=10))
def test_a_second_statement_the_engine_parses_is_refused(engine: Any, pieces: list[str]) -> None:
    sql = "SELECT 1 " + "".join(pieces) + "; DROP TABLE metrics.events"
    report = engine._conn.classify_query(sql)  # the engine's parser; it runs nothing
    assert report["statement_count"] < 2 or _passes(sql) is None, sql


def test_migrations_are_numbered_and_split_into_statements() -> None:
    found = migrations()
    assert [v for v, _, _ in found] == sorted({v for v, _, _ in found})
    assert found[0][0] == 1
    statements = _statements(found[0][2])
    assert len(statements) == 2 and all(s.startswith("CREATE TABLE") for s in statements)
