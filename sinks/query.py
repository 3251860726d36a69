"""The read-only query path.

chDB allows one process per data directory, and the sink's process holds it; so in embedded
mode the sink also serves reads over loopback HTTP (`POST /v1/query`), guarded by a token kept
in the data directory. Every statement must be a read (SELECT, WITH, SHOW, DESCRIBE, EXPLAIN,
EXISTS) and runs with ClickHouse's own `readonly=1`.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from clickhouse_connect.driver.client import Client
from fastapi import FastAPI, Header
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from schemas.health import ServiceHealth, http_status
from sinks.errors import QueryRefused

_READ_STATEMENT = re.compile(r"^\(*\s*(SELECT|WITH|SHOW|DESCRIBE|DESC|EXPLAIN|EXISTS)\b", re.IGNORECASE)
_COMMENTS = re.compile(r"--[^\n]*|/\*.*?\*/", re.DOTALL)
MAX_ROWS = 100_000


def read_only_statement(sql: str) -> str:
    """Return `sql` without a trailing semicolon if it is one read statement; else QueryRefused."""
    text = _COMMENTS.sub(" ", sql).strip().rstrip(";").strip()
    if not _READ_STATEMENT.match(text):
        raise QueryRefused("only read statements (SELECT, WITH, SHOW, DESCRIBE, EXPLAIN, EXISTS) are allowed")
    if ";" in _strip_literals(text):
        raise QueryRefused("one statement per query")
    return sql.strip().rstrip(";").strip()


def _strip_literals(sql: str) -> str:
    return re.sub(r"'(?:[^'\\]|\\.)*'", "''", sql)


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


class QueryRequest(BaseModel):
    sql: str = Field(min_length=1, max_length=100_000)


class QueryResult(BaseModel):
    columns: list[str]
    types: list[str]
    rows: list[list[Any]]


def run_read_only(client: Client, sql: str) -> QueryResult:
    """Run one read statement with readonly=1; raises QueryRefused or the driver's error.
    The driver serialises calls on one client, so the sink's inserts and reads may share it."""
    statement = read_only_statement(sql)
    result = client.query(statement, settings={"readonly": "1", "max_result_rows": str(MAX_ROWS)})
    return QueryResult(
        columns=list(result.column_names),
        types=[t.name for t in result.column_types],
        rows=[[_jsonable(v) for v in row] for row in result.result_rows],
    )


def create_query_app(client: Client, token: str, health: Callable[[], ServiceHealth]) -> FastAPI:
    """The query service; `health` makes the sink's report for `GET /health` (on a worker thread)."""
    app = FastAPI(title="Cosnap Metrics read-only query service", version="1")

    @app.post("/v1/query", response_model=QueryResult)
    def query(body: QueryRequest, authorization: str = Header(default="")) -> Any:
        """Run one read-only statement against the pipeline's ClickHouse."""
        presented = authorization.removeprefix("Bearer ").strip()
        if not hmac.compare_digest(presented.encode(), token.encode()):
            return JSONResponse({"detail": "missing or wrong query token"}, status_code=401)
        try:
            return run_read_only(client, body.sql)
        except QueryRefused as exc:
            return JSONResponse({"detail": str(exc)}, status_code=400)
        except Exception as exc:  # ClickHouse's own error text is the useful answer for the analyst
            return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.get("/health", response_model=ServiceHealth, responses={503: {"model": ServiceHealth}})
    def sink_health() -> JSONResponse:
        """The sink: ClickHouse answers (else 503) and its consumer inserts (else degraded)."""
        report = health()
        return JSONResponse(report.model_dump(mode="json"), status_code=http_status(report.status))

    return app
