"""The embedded dashboard: a page, and the JSON it polls, served by the sink's query service.

In embedded mode only the sink's process may open chDB, and Grafana cannot read it; so the query
service in that process serves `GET /dashboard`. The page's script polls `GET /dashboard/data`,
which runs the fixed queries of `sinks.query.panels` through the query service's reader (the
guard, read-only sessions and the read limits, `sinks.query.reader`): the browser never holds the
query token and cannot send SQL, nothing here writes, and a slow panel never holds up the sink's
inserts. The routes answer only requests addressed to a loopback name or the configured host, so a
web page the viewer opens elsewhere cannot read the numbers through DNS rebinding.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response
from pydantic import BaseModel

from sinks.query.panels import PANELS, Panel, expand_macros
from sinks.query.reader import Reader

log = logging.getLogger("cosnap.sink.dashboard")

TIME_RANGE = timedelta(hours=1)
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
# The page and its script and style come from this origin only; nothing is inlined or fetched
# from elsewhere (the page must work without the internet).
_PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_ASSETS = {  # URL path -> (file in sinks/query/static, media type)
    "/dashboard": ("dashboard.html", "text/html; charset=utf-8"),
    "/dashboard/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}


class PanelData(BaseModel):
    """The rows of one panel, or why there are none (`error`)."""

    title: str
    description: str
    columns: list[str]
    rows: list[list[Any]]
    error: str | None = None


class DashboardData(BaseModel):
    start: datetime
    end: datetime
    panels: dict[str, PanelData]


def _run_panel(reader: Reader, panel: Panel, start: datetime, end: datetime) -> PanelData:
    try:
        result = reader.run(expand_macros(panel.sql, start, end))
    except Exception as exc:  # one failing panel must not blank the others; the page shows why
        log.warning("dashboard panel %s failed: %s", panel.key, exc)
        return PanelData(
            title=panel.title, description=panel.description, columns=[], rows=[], error=str(exc)
        )
    return PanelData(
        title=panel.title, description=panel.description, columns=result.columns, rows=result.rows
    )


def dashboard_data(reader: Reader, end: datetime) -> DashboardData:
    """Every panel for the hour before `end`; blocks for the queries."""
    start = end - TIME_RANGE
    return DashboardData(
        start=start, end=end, panels={p.key: _run_panel(reader, p, start, end) for p in PANELS}
    )


def _host_guard(allowed: frozenset[str]) -> Callable[[Request], None]:
    def guard(request: Request) -> None:
        hostname = urlsplit("//" + request.headers.get("host", "")).hostname
        if hostname not in allowed:
            raise HTTPException(status_code=403, detail="the dashboard answers loopback host names only")

    return guard


def _asset(body: bytes, media_type: str) -> Callable[[], Response]:
    def serve() -> Response:
        return Response(
            body,
            media_type=media_type,
            headers={"Content-Security-Policy": _PAGE_POLICY, "X-Content-Type-Options": "nosniff"},
        )

    return serve


def create_dashboard_router(reader: Reader, query_host: str | None) -> APIRouter:
    """Routes of the page and its data; `query_host` is the host name the service was told to
    listen on, allowed besides the loopback names."""
    allowed = LOOPBACK_HOSTS | ({query_host} if query_host else set())
    router = APIRouter(dependencies=[Depends(_host_guard(allowed))], include_in_schema=False)
    static = resources.files("sinks.query").joinpath("static")

    for path, (name, media_type) in _ASSETS.items():
        router.add_api_route(path, _asset(static.joinpath(name).read_bytes(), media_type), methods=["GET"])

    @router.get("/dashboard/data", response_model=DashboardData)
    def data() -> Response:
        """The rows of every panel for the last hour."""
        body = dashboard_data(reader, datetime.now(UTC)).model_dump_json()
        return Response(body, media_type="application/json", headers={"Cache-Control": "no-store"})

    return router
