"""The root of every error this project raises on purpose; each package derives its own."""

from __future__ import annotations


class CosnapError(Exception):
    """Root exception of Cosnap Metrics."""
