"""`cosnap-metrics query`: read-only SQL against the pipeline's ClickHouse.

With embedded chDB, whose data directory only one process may open, it asks the running sink's
query service; when no pipeline is running it opens chDB itself. With a ClickHouse server it
connects itself. Either way the read goes through a `sinks.query.reader.Reader`: the same guard, a
read-only session and the same limits (COSNAP_QUERY_*) as every other read.
"""

from __future__ import annotations

import httpx

from cosnap_metrics.errors import QueryError
from schemas.errors import CosnapError
from schemas.settings import CommonSettings
from sinks.query.reader import QueryResult, Reader, read_limits


def run_query(settings: CommonSettings, sql: str, wait_s: float | None = None) -> QueryResult:
    """Run one read statement; raises QueryError with the guard's, the limit's or ClickHouse's reason.
    `wait_s` bounds the wait for the query service's answer (default: the read's limit + 30 s)."""
    if settings.embedded_clickhouse:
        try:
            return _via_service(settings, sql, settings.query_timeout_s + 30 if wait_s is None else wait_s)
        except httpx.ConnectError:
            pass  # no pipeline running: the data directory is free to open here
    try:
        reader = Reader(settings.resolved_clickhouse_url, read_limits(settings))
    except Exception as exc:  # the store cannot be opened: the driver's reason is the answer
        raise QueryError(str(exc)) from exc
    try:
        return reader.run(sql)
    except CosnapError as exc:
        raise QueryError(str(exc)) from exc
    finally:
        reader.close()


def _via_service(settings: CommonSettings, sql: str, wait_s: float) -> QueryResult:
    token_file = settings.query_token_file
    token = token_file.read_text().strip() if token_file.exists() else ""
    response = httpx.post(
        f"{settings.query_url}/v1/query",
        json={"sql": sql},
        headers={"Authorization": f"Bearer {token}"},
        timeout=wait_s,
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
