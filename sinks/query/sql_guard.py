"""What an analyst's SQL may be: one read statement that reaches nothing but the store.

The guard is the first of three walls (docs/reference.md, "Querying"): it reads the text with
the engine's own tokenizer rules (`sinks.query.sql_lexer`) and refuses, naming what it refused:

- more than one statement (one trailing `;` is allowed), `PARALLEL WITH`;
- a first word other than SELECT, WITH, SHOW, DESCRIBE/DESC, EXPLAIN, EXISTS (or `(` SELECT);
  SHOW only for TABLES, DATABASES, COLUMNS, DICTIONARIES and CREATE TABLE/VIEW/DATABASE;
- `INTO OUTFILE` (the engine writes it even with readonly=1), a `FORMAT` clause or `\\G`
  (the service picks the format), a `SETTINGS` clause (limits and readonly are the session's);
- every table function but `ALLOWED_TABLE_FUNCTIONS` (an allow-list: the rest read files, URLs,
  other servers, processes, Python objects or other tables), and the functions that read or
  describe the host (`HOST_FUNCTIONS`: `file('/etc/passwd')` works as a plain function and is
  not stopped by readonly=1), wherever they are called, whatever the quoting;
- `system.*` tables but `ALLOWED_SYSTEM_TABLES` (the others show paths on the host, other
  sessions' queries, users, grants or the server's configuration);
- a quoted name holding a backslash escape (`\\x66ile` is `file` to the engine), and anything
  the engine's lexer would not tokenize.

The second wall is the session (readonly=1 and the limits, set for the session's whole life,
`sinks.query.reader`); the third, on chDB, is the engine's own parser (`classify_query`), which must
see exactly one read-only statement.
"""

from __future__ import annotations

from collections.abc import Iterable

from sinks.query.errors import QueryRefused
from sinks.query.sql_lexer import Kind, Token, tokenize, unquote

MAX_QUERY_BYTES = 200_000  # below the engine's max_query_size (262,144), which would cut the text

READ_STATEMENTS = ("SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "EXISTS")
SHOW_FORMS = frozenset({"TABLES", "DATABASES", "COLUMNS", "FIELDS", "DICTIONARIES", "CREATE"})
SHOW_MODIFIERS = frozenset({"FULL", "EXTENDED", "TEMPORARY"})
SHOW_CREATE_FORMS = frozenset({"TABLE", "VIEW", "DATABASE", "DICTIONARY", "TEMPORARY"})

# Table functions that produce rows from their arguments alone.
ALLOWED_TABLE_FUNCTIONS = frozenset(
    {
        "numbers", "numbers_mt", "generate_series", "generateSeries", "generateRandom", "values", "null",
        "primes",
    }
)  # fmt: skip
# `format` is both a table function that parses its string argument and the scalar
# `format('{} {}', a, b)`: neither reaches anything, so the name is allowed wherever it is called.
_HARMLESS_CALLS = ALLOWED_TABLE_FUNCTIONS | {"format"}
# `SELECT name FROM system.table_functions` of the engine in chDB 4.4 (ClickHouse 26.9). The
# reader adds the names its running engine reports, so a table function a newer engine brings
# is refused too: only the allow-list passes.
ENGINE_TABLE_FUNCTIONS = frozenset(
    {
        "SQLStandardValues", "arrowstream", "azureBlobStorage", "azureBlobStorageCluster", "bigquery",
        "cluster", "clusterAllReplicas", "cosn", "deltaLake", "deltaLakeAzure", "deltaLakeAzureCluster",
        "deltaLakeCluster", "deltaLakeLocal", "deltaLakeS3", "deltaLakeS3Cluster", "dictionary", "eval",
        "executable", "file", "fileCluster", "filesystem", "format", "fuzzJSON", "fuzzQuery", "gcs",
        "generateRandom", "generateSeries", "generate_series", "hdfs", "hdfsCluster", "hudi", "hudiCluster",
        "iceberg", "icebergAzure", "icebergAzureCluster", "icebergCluster", "icebergHDFS",
        "icebergHDFSCluster", "icebergLocal", "icebergLocalCluster", "icebergS3", "icebergS3Cluster",
        "input", "jdbc", "loop", "merge", "mergeTreeAnalyzeIndexes", "mergeTreeAnalyzeIndexesUUID",
        "mergeTreeCodecBlockCounts", "mergeTreeIndex", "mergeTreeProjection", "mergeTreeTextIndex",
        "mongodb", "mysql", "null", "numbers", "numbers_mt", "odbc", "oss", "paimon", "paimonAzure",
        "paimonAzureCluster", "paimonCluster", "paimonHDFS", "paimonHDFSCluster", "paimonLocal", "paimonS3",
        "paimonS3Cluster", "postgresql", "primes", "prometheusQuery", "prometheusQueryRange", "python",
        "redis", "remote", "remoteSecure", "s3", "s3Cluster", "sqlite", "timeSeriesData",
        "timeSeriesMetricFamilies", "timeSeriesMetrics", "timeSeriesSamples", "timeSeriesSelector",
        "timeSeriesTags", "url", "urlCluster", "values", "view", "viewExplain", "viewIfPermitted",
        "ytsaurus", "zeros", "zeros_mt",
    }
)  # fmt: skip
# Plain functions that read the host's files or describe the host.
HOST_FUNCTIONS = frozenset(
    {
        "file", "filesystemAvailable", "filesystemCapacity", "filesystemUnreserved", "getServerSetting",
        "getMacro", "getOSKernelVersion", "getServerPort", "hostName", "hostname", "fullHostName", "fqdn",
        "serverUUID", "getClientHTTPHeader", "currentRequestURL",
    }
)  # fmt: skip
_HOST_LOWER = frozenset(n.lower() for n in HOST_FUNCTIONS)
# System tables that describe the schema, the engine's vocabulary or the session's own settings.
# Refused among the others: tables and databases (their data paths), disks, parts, processes,
# query logs, users, grants, server_settings, macros, build_options, stack_trace, ...
ALLOWED_SYSTEM_TABLES = frozenset(
    {
        "one", "numbers", "numbers_mt", "zeros", "zeros_mt", "primes", "columns", "functions",
        "table_functions", "table_engines", "data_type_families", "formats", "time_zones", "settings",
        "aggregate_function_combinators", "collations", "keywords",
    }
)  # fmt: skip


class SqlGuard:
    """Checks analysts' SQL; `denied_calls` is every function name refused as a call."""

    def __init__(self, table_functions: Iterable[str] = ()) -> None:
        names = ENGINE_TABLE_FUNCTIONS | frozenset(table_functions)
        self.denied_calls = frozenset(n.lower() for n in (names - _HARMLESS_CALLS) | HOST_FUNCTIONS)

    def check(self, sql: str) -> str:
        """`sql` without its trailing `;` if it is one allowed read statement; else QueryRefused
        whose message names what was refused."""
        if len(sql.encode()) > MAX_QUERY_BYTES:
            raise QueryRefused(f"refused: the query is longer than {MAX_QUERY_BYTES:,} bytes")
        tokens = [t for t in tokenize(sql) if t.significant]
        for token in tokens:
            if token.kind is Kind.ERROR:
                raise QueryRefused(f"refused: the query does not parse (at position {token.start})")
        if tokens and tokens[-1].kind is Kind.SEMICOLON:
            end = tokens[-1].start
            tokens = tokens[:-1]
        else:
            end = len(sql)
        if not tokens:
            raise QueryRefused("refused: the query is empty")
        for token in tokens:
            if token.kind is Kind.SEMICOLON:
                raise QueryRefused(
                    f"refused: more than one statement (';' at position {token.start}); "
                    "a query is one statement"
                )
        _check_statement(tokens)
        for i, token in enumerate(tokens):
            self._check_token(tokens, i, token)
        return sql[:end].strip()

    def _check_token(self, tokens: list[Token], i: int, token: Token) -> None:
        if token.kind is Kind.VERTICAL_DELIMITER:
            raise QueryRefused("refused: \\G (the service chooses the output format)")
        if token.kind is Kind.QUOTED_IDENTIFIER and "\\" in token.text:
            raise QueryRefused(f"refused: the quoted name {token.text[:40]} holds a backslash escape")
        if token.kind not in (Kind.WORD, Kind.QUOTED_IDENTIFIER):
            return
        before = tokens[i - 1] if i > 0 else None
        after = tokens[i + 1] if i + 1 < len(tokens) else None
        name = unquote(token)
        if after is not None and after.kind is Kind.OPEN_PAREN and name.lower() in self.denied_calls:
            _refuse_call(name)
        member = before is not None and before.kind is Kind.DOT
        if name.lower() == "system" and after is not None and after.kind is Kind.DOT and not member:
            _check_system_table(tokens[i + 2] if i + 2 < len(tokens) else None)
        if token.kind is Kind.WORD and not member:
            _check_keyword(name.upper(), before, after)


def _refuse_call(name: str) -> None:
    if name.lower() in _HOST_LOWER:
        raise QueryRefused(f"refused: {name}() reads or describes the host")
    raise QueryRefused(
        f"refused: table function {name}() reaches files, the network, other servers or other tables "
        f"(allowed table functions: {', '.join(sorted(ALLOWED_TABLE_FUNCTIONS))})"
    )


def _check_system_table(table: Token | None) -> None:
    if table is None or table.kind not in (Kind.WORD, Kind.QUOTED_IDENTIFIER):
        return
    if unquote(table).lower() not in ALLOWED_SYSTEM_TABLES:
        raise QueryRefused(
            f"refused: system.{unquote(table)[:40]} (it shows the host, other sessions or the server's "
            f"configuration; allowed system tables: {', '.join(sorted(ALLOWED_SYSTEM_TABLES))})"
        )


def _check_keyword(word: str, before: Token | None, after: Token | None) -> None:
    """INTO OUTFILE, FORMAT, SETTINGS and PARALLEL WITH, wherever they stand."""
    if word == "INTO":
        raise QueryRefused("refused: INTO OUTFILE (results come back in the response, never into files)")
    if word == "SETTINGS":
        raise QueryRefused(
            "refused: a SETTINGS clause (the read limits and readonly are the service's, COSNAP_QUERY_*)"
        )
    called = after is not None and after.kind is Kind.OPEN_PAREN
    aliased = before is not None and before.text.upper() == "AS"
    if word == "FORMAT" and not called and not aliased:
        raise QueryRefused("refused: a FORMAT clause (the service chooses the output format)")
    if word == "PARALLEL" and after is not None and after.text.upper() == "WITH":
        raise QueryRefused("refused: PARALLEL WITH (a query is one statement)")


def _check_statement(tokens: list[Token]) -> None:
    """The statement's first words make it a read."""
    first = 0
    while first < len(tokens) and tokens[first].kind is Kind.OPEN_PAREN:
        first += 1
    head = tokens[first] if first < len(tokens) else None
    word = head.text.upper() if head is not None and head.kind is Kind.WORD else ""
    readable = ("SELECT", "WITH") if first else READ_STATEMENTS
    if word not in readable:
        shown = word or (head.text if head is not None else "")
        raise QueryRefused(
            f"refused: {shown[:40]} is not a read statement (read statements: {', '.join(READ_STATEMENTS)})"
        )
    if word != "SHOW":
        return
    words = [t.text.upper() if t.kind is Kind.WORD else "" for t in tokens[first + 1 : first + 4]]
    while words and words[0] in SHOW_MODIFIERS:
        words = words[1:]
    form = words[0] if words else ""
    if form not in SHOW_FORMS or (form == "CREATE" and (len(words) < 2 or words[1] not in SHOW_CREATE_FORMS)):
        raise QueryRefused(
            f"refused: SHOW {' '.join(w for w in words if w)[:40]} (allowed: SHOW TABLES, SHOW DATABASES, "
            "SHOW COLUMNS, SHOW DICTIONARIES, SHOW CREATE TABLE|VIEW|DATABASE|DICTIONARY)"
        )


def split_format(sql: str) -> tuple[str, str | None]:
    """`sql` without a trailing `FORMAT <name>` clause (and `;`), and the name; the clause the
    ClickHouse HTTP interface's clients append to choose how results come back. The guard still
    refuses a FORMAT clause anywhere else."""
    tokens = [t for t in tokenize(sql) if t.significant]
    if tokens and tokens[-1].kind is Kind.SEMICOLON:
        tokens = tokens[:-1]
    if len(tokens) < 3:
        return sql, None
    before, keyword, name = tokens[-3:]
    if (
        keyword.kind is Kind.WORD
        and keyword.text.upper() == "FORMAT"
        and name.kind is Kind.WORD
        and before.text.upper() != "AS"
    ):
        return sql[: keyword.start], name.text
    return sql, None


GUARD = SqlGuard()


def read_only_statement(sql: str) -> str:
    """`GUARD.check`: the statement to run, or QueryRefused naming what was refused."""
    return GUARD.check(sql)
