"""Errors of the read-only query service and its dashboards."""

from __future__ import annotations

from schemas.errors import CosnapError


class QueryRefused(CosnapError):
    """A statement the read-only query path does not run; the message names what was refused."""


class ReadFailed(CosnapError):
    """The engine refused or failed a read; the message is safe to show (it never quotes data
    the engine read). `name` and `code` are the engine's (`SYNTAX_ERROR`, 62), which the
    ClickHouse HTTP interface reports as the server does."""

    def __init__(self, message: str, name: str = "UNKNOWN", code: int = 1002) -> None:
        super().__init__(message)
        self.name = name
        self.code = code


class ReadLimitHit(ReadFailed):
    """A read went past one of the session's limits; `limit` is the ClickHouse setting's name."""

    def __init__(self, message: str, limit: str, name: str, code: int) -> None:
        super().__init__(message, name, code)
        self.limit = limit


class ReadCancelled(ReadFailed):
    """A read was stopped before it finished (its client went away)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "QUERY_WAS_CANCELLED", 394)


class ReadersBusy(CosnapError):
    """Every read session is taken: the caller should retry later (HTTP 429)."""


class UnknownMacro(CosnapError):
    """A panel query uses a Grafana macro that the embedded dashboard cannot expand."""
