"""Errors of the sinks and the read-only query service."""

from __future__ import annotations

from schemas.errors import CosnapError


class SinkError(CosnapError):
    """An insert failed; the batch is kept and its offsets stay uncommitted."""


class QueryRefused(CosnapError):
    """A statement the read-only query path does not run (anything but SELECT-like reads)."""


class UnknownMacro(CosnapError):
    """A panel query uses a Grafana macro that the embedded dashboard cannot expand."""
