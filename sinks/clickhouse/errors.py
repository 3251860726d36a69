"""Errors of the ClickHouse sink."""

from __future__ import annotations

from schemas.errors import CosnapError


class SinkError(CosnapError):
    """An insert failed; the batch is kept and its offsets stay uncommitted."""
