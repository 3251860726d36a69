"""Fixtures of the ingest tests: the app served with a fake producer (no Kafka)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ingest.fakes import ServedIngest


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ServedIngest]:
    """The ingest app with a FakeProducer, not started: the test may set `settings` first."""
    ingest = ServedIngest(tmp_path / "data")
    yield ingest
    ingest.stop()
