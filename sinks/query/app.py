"""The read-only query service of the embedded store: `POST /v1/query` and `GET /health`.

chDB allows one process per data directory, and the sink's process holds it; so in embedded
mode the sink also serves reads over loopback HTTP, guarded by a token kept in the data
directory. Reads go through a `sinks.query.reader.Reader`: sessions of their own, read-only and
limited for their whole life, so a read never waits for an insert nor an insert for a read.

Answers: 200 with the rows; 403 for SQL the guard or the engine's parser refuses (the message
names what); 400 for a read the engine failed or that went past a limit (`limit` names the
setting); 429 when every read session is busy; 401 without the token. A read whose client
goes away is killed in the engine.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from schemas.health import ServiceHealth, http_status
from sinks.query.errors import QueryRefused, ReadCancelled, ReadersBusy, ReadFailed, ReadLimitHit
from sinks.query.reader import QueryResult, Reader, new_ticket

__all__ = ["QueryRequest", "QueryResult", "create_query_app"]

log = logging.getLogger("cosnap.sink.query")
_POLL_S = 0.2  # how often a running read looks whether its client is still there
T = TypeVar("T")


class QueryRequest(BaseModel):
    sql: str = Field(min_length=1, max_length=100_000)


class QueryError(BaseModel):
    detail: str
    error: str  # refused, limit, engine, busy, cancelled
    limit: str | None = None  # the ClickHouse setting a `limit` error went past


async def read_while_connected(reader: Reader, request: Request, run: Callable[[str], T]) -> T:
    """`run(ticket)` on a worker thread; if the client goes away meanwhile, kill the read that
    carries the ticket."""
    ticket = new_ticket()
    work = asyncio.ensure_future(run_in_threadpool(run, ticket))
    while not work.done():
        await asyncio.wait({work}, timeout=_POLL_S)
        if not work.done() and await request.is_disconnected():
            log.info("query client went away: cancelling its read")
            while not work.done():  # again until it ends: the kill may come before the read starts
                await run_in_threadpool(reader.cancel, ticket)
                await asyncio.wait({work}, timeout=1.0)
    return work.result()


def _error(status: int, detail: str, error: str, limit: str | None = None) -> JSONResponse:
    body = QueryError(detail=detail, error=error, limit=limit).model_dump(exclude_none=True)
    headers = {"Retry-After": "1"} if status == 429 else None
    return JSONResponse(body, status_code=status, headers=headers)


def create_query_app(reader: Reader, token: str, health: Callable[[], ServiceHealth]) -> FastAPI:
    """The query service; `health` makes the sink's report for `GET /health` (on a worker thread)."""
    app = FastAPI(title="Cosnap Metrics read-only query service", version="1")

    @app.post(
        "/v1/query",
        response_model=QueryResult,
        responses={400: {"model": QueryError}, 403: {"model": QueryError}, 429: {"model": QueryError}},
    )
    async def query(request: Request, body: QueryRequest, authorization: str = Header(default="")) -> Any:
        """Run one read-only statement against the pipeline's ClickHouse, within the read limits."""
        presented = authorization.removeprefix("Bearer ").strip()
        if not hmac.compare_digest(presented.encode(), token.encode()):
            return JSONResponse({"detail": "missing or wrong query token"}, status_code=401)
        try:
            return await read_while_connected(reader, request, functools.partial(reader.run, body.sql))
        except QueryRefused as exc:
            return _error(403, str(exc), "refused")
        except ReadersBusy as exc:
            return _error(429, str(exc), "busy")
        except ReadLimitHit as exc:
            return _error(400, str(exc), "limit", exc.limit)
        except ReadCancelled as exc:
            return _error(499, str(exc), "cancelled")
        except ReadFailed as exc:
            return _error(400, str(exc), "engine")

    @app.get("/health", response_model=ServiceHealth, responses={503: {"model": ServiceHealth}})
    def sink_health() -> JSONResponse:
        """The sink: ClickHouse answers (else 503) and its consumer inserts (else degraded)."""
        report = health()
        return JSONResponse(report.model_dump(mode="json"), status_code=http_status(report.status))

    return app
