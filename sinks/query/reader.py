"""Analysts' reads: sessions that are read-only and limited for their whole life.

A `Reader` holds `max_concurrent` sessions of its own, apart from the sink's writer. Each is
opened, given the limits (`max_execution_time`, `max_memory_usage`, rows and bytes read and
returned) and then `readonly = 1`, in that order, with `SET`: from then on no statement in the
session can change a setting, neither with `SET` nor with a `SETTINGS` clause (measured,
docs/findings.md). On chDB the sessions are handles on the engine the process already holds,
and a read on one does not wait for an insert on another (the engine runs them on its own
threads; measured, docs/findings.md). With a ClickHouse server they are HTTP clients that
send the same settings with every request.

A read passes the guard (`sinks.query.sql_guard`), then on chDB the engine's own parser
(`classify_query`) must see one read-only statement, then it runs in a free session; none free
is `ReadersBusy` (HTTP 429). A read carries a ticket in a leading comment, by which `cancel`
finds it in `system.processes` and kills it (its client went away). The engine's errors come
back by name; their text only for the kinds that describe the query, never for those that can
quote the data the engine read (a value that did not parse, for instance).
"""

from __future__ import annotations

import logging
import queue
import re
import uuid
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError, scrub_error_details
from pydantic import BaseModel

from plumbing.clickhouse import chdb_connection, connect
from schemas.settings import CommonSettings
from sinks.query.errors import QueryRefused, ReadCancelled, ReadersBusy, ReadFailed, ReadLimitHit
from sinks.query.sql_guard import SqlGuard, split_format

log = logging.getLogger("cosnap.sink.reader")

_TICKET = "cosnap-read "
# Engine errors whose message describes the query (names, types, syntax), shown whole. Every
# other kind is shown by name only: its message can quote values the engine read.
_DESCRIBES_THE_QUERY = frozenset(
    {
        "SYNTAX_ERROR", "UNKNOWN_IDENTIFIER", "UNKNOWN_TABLE", "UNKNOWN_DATABASE", "UNKNOWN_FUNCTION",
        "UNKNOWN_AGGREGATE_FUNCTION", "UNKNOWN_TYPE", "ILLEGAL_TYPE_OF_ARGUMENT", "ILLEGAL_COLUMN",
        "NUMBER_OF_ARGUMENTS_DOESNT_MATCH", "TOO_MANY_ARGUMENTS_FOR_FUNCTION",
        "TOO_FEW_ARGUMENTS_FOR_FUNCTION", "NOT_AN_AGGREGATE", "ILLEGAL_AGGREGATION", "AMBIGUOUS_IDENTIFIER",
        "AMBIGUOUS_COLUMN_NAME", "NO_COMMON_TYPE", "INCORRECT_QUERY", "UNKNOWN_QUERY_PARAMETER",
        "READONLY", "ACCESS_DENIED", "UNSUPPORTED_METHOD", "NOT_IMPLEMENTED", "EMPTY_QUERY",
    }
)  # fmt: skip
_CONTROLLED_BY = re.compile(r"controlled by '(\w+)' setting")


@dataclass(frozen=True, slots=True)
class ReadLimits:
    """The limits of every read; 0 = none (except the time and the concurrency)."""

    timeout_s: float = 30.0
    max_memory_bytes: int = 2_000_000_000
    max_rows_to_read: int = 1_000_000_000
    max_bytes_to_read: int = 100_000_000_000
    max_result_rows: int = 100_000
    max_result_bytes: int = 100_000_000
    max_concurrent: int = 4

    def settings(self) -> dict[str, str]:
        """The session's settings, `readonly` last (after it, nothing can be changed)."""
        return {
            "max_execution_time": f"{self.timeout_s:g}",
            "timeout_overflow_mode": "throw",
            "max_memory_usage": str(self.max_memory_bytes),
            "max_rows_to_read": str(self.max_rows_to_read),
            "max_bytes_to_read": str(self.max_bytes_to_read),
            "read_overflow_mode": "throw",
            "max_result_rows": str(self.max_result_rows),
            "max_result_bytes": str(self.max_result_bytes),
            "result_overflow_mode": "throw",
            "readonly": "1",
        }

    def describe(self, setting: str) -> str:
        """`setting = value (COSNAP_… variable)` for an error message."""
        field, unit = {
            "max_execution_time": ("timeout_s", " s"),
            "max_memory_usage": ("max_memory_bytes", " bytes"),
            "max_rows_to_read": ("max_rows_to_read", " rows"),
            "max_bytes_to_read": ("max_bytes_to_read", " bytes"),
            "max_result_rows": ("max_result_rows", " rows"),
            "max_result_bytes": ("max_result_bytes", " bytes"),
        }[setting]
        value = getattr(self, field)
        variable = "COSNAP_QUERY_" + field.upper()
        return f"{setting} = {value:,}{unit} (set by {variable})"


def read_limits(settings: CommonSettings) -> ReadLimits:
    return ReadLimits(
        timeout_s=settings.query_timeout_s,
        max_memory_bytes=settings.query_max_memory_bytes,
        max_rows_to_read=settings.query_max_rows_to_read,
        max_bytes_to_read=settings.query_max_bytes_to_read,
        max_result_rows=settings.query_max_result_rows,
        max_result_bytes=settings.query_max_result_bytes,
        max_concurrent=settings.query_max_concurrent,
    )


class QueryResult(BaseModel):
    columns: list[str]
    types: list[str]
    rows: list[list[Any]]


@dataclass(frozen=True, slots=True)
class RawRead:
    """One read of the ClickHouse HTTP interface, answered in the engine's own output format.
    `project` None reads every project (the query token); a project reads its own rows only."""

    sql: str
    output_format: str
    project: str | None
    database: str
    params: dict[str, str]
    settings: dict[str, str]  # the client's, from `CLIENT_SETTINGS` only


@dataclass(frozen=True, slots=True)
class RawResult:
    output_format: str
    body: bytes
    rows_read: int
    bytes_read: int
    elapsed_s: float


# Settings a client of the HTTP interface may set for its read: how results are written and
# read back, never what the session may do. Set before the session's limits and `readonly`.
CLIENT_SETTING_PREFIXES = ("output_format_", "input_format_", "format_", "date_time_")
CLIENT_SETTINGS = frozenset(
    {
        "session_timezone", "join_use_nulls", "extremes", "max_block_size", "totals_mode",
        "use_client_time_zone", "enable_http_compression", "http_zlib_compression_level",
        "wait_end_of_query", "send_progress_in_http_headers", "http_headers_progress_interval_ms",
        "cast_keep_nullable", "enable_analyzer", "aggregate_functions_null_for_empty", "log_comment",
    }
)  # fmt: skip
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_ENGINE_ERROR = re.compile(
    r"Code: (\d+)\. DB::Exception: (.*?)(?: \((\w+)\))?(?: \(version [^)]*\))?\.?\s*$", re.S
)


def _quote(value: str) -> str:
    """`value` as a ClickHouse string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _identifier(name: str) -> str:
    """`name` if it is a plain identifier (a database or setting name), else ReadFailed."""
    if not _IDENTIFIER.fullmatch(name):
        raise ReadFailed(f"not a plain name: {name[:64]!r}", "BAD_ARGUMENTS", 36)
    return name


def client_setting(name: str) -> bool:
    """Whether a client of the HTTP interface may set `name` on its read."""
    return name in CLIENT_SETTINGS or name.startswith(CLIENT_SETTING_PREFIXES)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal | UUID):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value


def new_ticket() -> str:
    return uuid.uuid4().hex


class Reader:
    """Read sessions on the ClickHouse at `url` (`chdb:///path` or `http(s)://…`)."""

    def __init__(self, url: str, limits: ReadLimits) -> None:
        self.limits = limits
        self._engine: Any = None  # chDB only: a handle for the parser and for KILL QUERY
        table_functions: list[str] = []
        if url.startswith("chdb:"):
            import chdb  # imported here: the ingest and the streams worker never load the engine

            self._engine = chdb.connect(chdb_connection(url))  # type: ignore[no-untyped-call]
            listed = self._engine.query("SELECT name FROM system.table_functions", "TabSeparated")
            table_functions = listed.bytes().decode().split()
        self.guard = SqlGuard(table_functions)
        self._project_tables = self._tables_with_projects()
        self._url = url
        self._idle: queue.SimpleQueue[Client] = queue.SimpleQueue()
        self._sessions: list[Client] = []
        try:
            for _ in range(limits.max_concurrent):
                self._idle.put(self._open_session())
        except Exception:
            self.close()
            raise

    def _open_session(self) -> Client:
        session = connect(self._url)
        for key, value in self.limits.settings().items():  # readonly last
            session.set_client_setting(key, value)
        self._sessions.append(session)
        return session

    def _sound(self, session: Client) -> Client:
        """`session` if it still answers `SELECT 1` with 1, else a new one in its place. After a
        failed multi-statement chDB keeps the first statement's output on the handle and hands it
        to the next query (measured, docs/findings.md); the guard lets no such text through, and
        this keeps any other leftover from reaching the next analyst."""
        try:
            if session.query("SELECT 1").result_rows == [(1,)]:
                return session
        except DatabaseError:
            pass
        log.warning("a read session answered out of turn after an error: replacing it")
        self._sessions.remove(session)
        session.close()
        return self._open_session()

    def check(self, sql: str) -> str:
        """The statement to run: the guard's, then (chDB) the engine parser's verdict."""
        statement = self.guard.check(sql)
        if self._engine is not None:
            # The extension object behind chdb's Connection carries the parser's classifier.
            report = self._engine._conn.classify_query(statement)
            count = int(report["statement_count"])
            kind = getattr(report["query_class"], "name", str(report["query_class"]))
            if count > 1 or (count == 1 and kind != "READ_ONLY"):
                raise QueryRefused(f"refused: the engine's parser reads {count} statement(s) of class {kind}")
        return statement

    def _take_session(self) -> Client:
        """An idle read session, or ReadersBusy when all `max_concurrent` are taken."""
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            raise ReadersBusy(
                f"all {self.limits.max_concurrent} read sessions are busy (COSNAP_QUERY_MAX_CONCURRENT); "
                "retry shortly"
            ) from None

    def run(self, sql: str, ticket: str | None = None) -> QueryResult:
        """Run one read; QueryRefused, ReadersBusy, ReadLimitHit, ReadCancelled or ReadFailed."""
        statement = self.check(sql)
        session = self._take_session()
        try:
            result = session.query(f"/* {_TICKET}{ticket or new_ticket()} */ {statement}")
        except DatabaseError as exc:
            session = self._sound(session)
            raise self._read_error(exc.name or "UNKNOWN", exc.code, scrub_error_details(str(exc))) from None
        finally:
            self._idle.put(session)
        return QueryResult(
            columns=list(result.column_names),
            types=[t.name for t in result.column_types],
            rows=[[_jsonable(v) for v in row] for row in result.result_rows],
        )

    def _tables_with_projects(self) -> list[str]:
        """`database.table` of every table with a `project` column (chDB): a read key's session
        reads only its project's rows of each."""
        if self._engine is None:
            return []
        listed = self._engine.query(
            "SELECT DISTINCT database || '.' || table FROM system.columns WHERE name = 'project' "
            "AND database NOT IN ('system', 'information_schema', 'INFORMATION_SCHEMA')",
            "TabSeparated",
        )
        return sorted(listed.bytes().decode().split())

    def _raw_session(self, read: RawRead) -> Any:
        """A new session on the engine for one read: the client's settings, then the limits,
        the project's row filters, and `readonly = 1` last, after which nothing can change them
        (neither `SET` nor a `SETTINGS` clause; docs/findings.md). A session costs ~3 ms."""
        import chdb

        session = chdb.connect(chdb_connection(self._url))  # type: ignore[no-untyped-call]
        try:
            if read.database:
                session.query(f"USE {_identifier(read.database)}")
            settings = {key: _quote(value) for key, value in read.settings.items()}
            if read.project is not None:
                filters = ", ".join(
                    f"{_quote(table)}: {_quote('project = ' + _quote(read.project))}"
                    for table in self._project_tables
                )
                settings["additional_table_filters"] = "{" + filters + "}"
            settings |= {key: _quote(value) for key, value in self.limits.settings().items()}  # readonly last
            for key, literal in settings.items():
                session.query(f"SET {_identifier(key)} = {literal}")
        except Exception:
            session.close()
            raise
        return session

    def run_raw(self, read: RawRead, ticket: str) -> RawResult:
        """Run one read of the ClickHouse HTTP interface (chDB only) in a session of its own,
        taking one of the `max_concurrent` read slots; the errors of `run`."""
        if self._engine is None:
            raise ReadFailed(
                "the ClickHouse HTTP interface serves the embedded store only", "NOT_IMPLEMENTED", 48
            )
        unformatted, named_format = split_format(read.sql)
        output_format = named_format or read.output_format
        statement = self.check(unformatted)
        slot = self._take_session()  # a read slot: its session stays unused
        try:
            try:
                session = self._raw_session(read)
            except ReadFailed:
                raise
            except Exception as exc:
                raise self._engine_error(exc) from None
            try:
                result = session.query(
                    f"/* {_TICKET}{ticket} */ {statement}", output_format, params=read.params or None
                )
            except Exception as exc:
                raise self._engine_error(exc) from None
            finally:
                session.close()
        finally:
            self._idle.put(slot)
        return RawResult(
            output_format, result.bytes(), result.rows_read(), result.bytes_read(), result.elapsed()
        )

    def _engine_error(self, exc: Exception) -> ReadFailed:
        """The error of a failed chDB call, as `run` reports engine errors."""
        text = str(exc)
        match = _ENGINE_ERROR.match(text.strip())
        if match is None:
            return self._read_error("UNKNOWN", None, text)
        return self._read_error(match.group(3) or "UNKNOWN", match.group(1), text.strip())

    def cancel(self, ticket: str) -> None:
        """Stop the read carrying `ticket`, if it runs (chDB; a server stops a read whose HTTP
        client went away by itself)."""
        if self._engine is None:
            return
        self._engine.query(
            "KILL QUERY WHERE startsWith(query, {prefix:String}) ASYNC",
            "TabSeparated",
            params={"prefix": f"/* {_TICKET}{ticket} */"},
        )

    def _read_error(self, name: str, engine_code: int | str | None, text: str) -> ReadFailed:
        log.info("read failed: %s (code %s)", name, engine_code)
        code = int(str(engine_code)) if str(engine_code).isdigit() else 1002
        if name == "QUERY_WAS_CANCELLED":
            return ReadCancelled("the read was cancelled (its client went away)")
        limit = _limit_of(name, text)
        if limit is not None:
            return ReadLimitHit(f"the read went past {self.limits.describe(limit)}", limit, name, code)
        if name in _DESCRIBES_THE_QUERY:
            return ReadFailed(text, name, code)
        return ReadFailed(
            f"the engine failed the read: {name} (code {code}); its message is withheld because it can "
            "quote the data the engine read",
            name,
            code,
        )

    def close(self) -> None:
        for session in self._sessions:
            session.close()
        self._sessions = []
        if self._engine is not None:
            self._engine.close()
            self._engine = None


def _limit_of(name: str, text: str) -> str | None:
    """The ClickHouse setting a limit error names, or None if the error is not one."""
    if name == "TIMEOUT_EXCEEDED":
        return "max_execution_time"
    if name == "MEMORY_LIMIT_EXCEEDED":
        return "max_memory_usage"
    if name in ("TOO_MANY_ROWS", "TOO_MANY_BYTES"):
        controlled = _CONTROLLED_BY.search(text)
        if controlled and controlled.group(1) in ("max_rows_to_read", "max_bytes_to_read"):
            return controlled.group(1)
        return "max_rows_to_read" if name == "TOO_MANY_ROWS" else "max_bytes_to_read"
    if name == "TOO_MANY_ROWS_OR_BYTES":
        return "max_result_bytes" if "max bytes" in text else "max_result_rows"
    return None
