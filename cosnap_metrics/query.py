"""`cosnap-metrics query`: read-only SQL against the pipeline's ClickHouse.

With a ClickHouse server the CLI connects itself (readonly=1). With embedded chDB, whose data
directory only one process may open, it asks the running sink's query service; when no
pipeline is running it opens chDB directly.
"""

from __future__ import annotations

import httpx

from cosnap_metrics.errors import QueryError
from schemas.settings import CommonSettings
from sinks.clickhouse import connect
from sinks.errors import QueryRefused
from sinks.query import QueryResult, run_read_only


def run_query(settings: CommonSettings, sql: str) -> QueryResult:
    """Run one read statement; raises QueryError with ClickHouse's or the guard's reason."""
    if settings.embedded_clickhouse:
        try:
            return _via_service(settings, sql)
        except httpx.ConnectError:
            pass  # no pipeline running: the data directory is free to open here
    try:
        return run_read_only(connect(settings.resolved_clickhouse_url), sql)
    except QueryRefused as exc:
        raise QueryError(str(exc)) from exc
    except Exception as exc:  # the driver's error text is the answer the analyst needs
        raise QueryError(str(exc)) from exc


def _via_service(settings: CommonSettings, sql: str) -> QueryResult:
    token_file = settings.query_token_file
    token = token_file.read_text().strip() if token_file.exists() else ""
    response = httpx.post(
        f"{settings.query_url}/v1/query",
        json={"sql": sql},
        headers={"Authorization": f"Bearer {token}"},
        timeout=300,
    )
    if response.status_code != 200:
        raise QueryError(response.json().get("detail", response.text))
    return QueryResult.model_validate(response.json())


def format_tsv(result: QueryResult) -> str:
    """TabSeparatedWithNames, as clickhouse-client prints it."""

    def cell(value: object) -> str:
        text = "\\N" if value is None else str(value)
        return (
            text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
            if value is not None
            else text
        )

    lines = ["\t".join(result.columns)]
    lines.extend("\t".join(cell(v) for v in row) for row in result.rows)
    return "\n".join(lines)
