"""Body parsing without a server: skew correction, bounds, caps, gzip."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ingest.batch import TimePolicy, parse_events, split_body
from ingest.body import MAX_BODY_BYTES, decompress, read_capped
from ingest.errors import BadRequest, PayloadTooLarge
from ingest.keys import KeyStore, ensure_dev_key

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
POLICY = TimePolicy(max_future_skew=timedelta(minutes=10), max_event_age=timedelta(days=30))
FEATURE = {"type": "feature", "feature": "share", "action": "clicked"}


def test_timestamp_is_corrected_by_the_clients_clock_offset() -> None:
    sent_at = NOW + timedelta(hours=2)  # client clock two hours fast
    batch = parse_events(
        [FEATURE | {"timestamp": (sent_at - timedelta(seconds=5)).isoformat()}], sent_at, NOW, POLICY
    )
    assert batch.accepted[0]["timestamp"] == "2026-11-26T11:59:55.000Z"


def test_missing_timestamp_and_event_id_are_filled_in() -> None:
    [event] = parse_events([FEATURE], None, NOW, POLICY).accepted
    assert event["timestamp"] == "2026-11-26T12:00:00.000Z"
    assert len(event["event_id"]) == 32


def test_far_future_and_far_past_are_rejected() -> None:
    items = [
        FEATURE | {"timestamp": (NOW + timedelta(minutes=11)).isoformat()},
        FEATURE | {"timestamp": (NOW - timedelta(days=31)).isoformat()},
        FEATURE | {"timestamp": (NOW - timedelta(days=29)).isoformat()},
    ]
    batch = parse_events(items, None, NOW, POLICY)
    assert [r.reason for r, _ in batch.rejected] == ["timestamp too far in the future", "timestamp too old"]
    assert len(batch.accepted) == 1


def test_split_body_shapes() -> None:
    assert split_body(FEATURE | {"api_key": "k"}) == ([FEATURE], None, "k")
    items, sent_at, key = split_body({"events": [FEATURE], "sent_at": "2026-11-26T12:00:00Z"})
    assert items == [FEATURE] and sent_at == NOW and key is None
    with pytest.raises(BadRequest):
        split_body({"events": [FEATURE], "extra": 1})
    with pytest.raises(PayloadTooLarge):
        split_body({"events": [FEATURE] * 1001})


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def test_body_cap_applies_without_content_length() -> None:
    chunk = b"x" * (256 * 1024)
    with pytest.raises(PayloadTooLarge):
        asyncio.run(read_capped(_chunks(*[chunk] * 5), None))
    assert len(asyncio.run(read_capped(_chunks(chunk, chunk), None))) == 512 * 1024


def test_gzip_bomb_stops_at_the_cap() -> None:
    assert decompress(gzip.compress(b"{}"), "gzip") == b"{}"
    with pytest.raises(PayloadTooLarge):
        decompress(gzip.compress(b"0" * (MAX_BODY_BYTES * 8)), "gzip")
    with pytest.raises(BadRequest):
        decompress(b"not gzip", "gzip")


def test_keys_are_stored_as_hashes_and_map_to_one_project(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    store = KeyStore(path)
    key = store.create("cosnap")
    assert store.project_for(key) == "cosnap"
    assert store.project_for(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert key not in path.read_text()
    dev = ensure_dev_key(store, tmp_path)
    assert ensure_dev_key(store, tmp_path) == dev
    assert store.project_for(dev) == "default"
