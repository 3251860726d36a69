"""Errors of the runner and CLI."""

from __future__ import annotations

from schemas.errors import CosnapError


class RunnerError(CosnapError):
    """The embedded pipeline could not be set up or started (missing Java or Maven, a dead broker)."""


class QueryError(CosnapError):
    """A read-only query was refused or failed; the message is ClickHouse's or the guard's reason."""
