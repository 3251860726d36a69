"""Body parsing without a server: skew correction, bounds, caps, gzip, item isolation, keys."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from ingest.batch import BodyParts, ParsedBatch, TimePolicy, dead_letter_raw, parse_events, split_body
from ingest.body import MAX_BODY_BYTES, Unparseable, decode_body, decompress, read_capped
from ingest.errors import BadRequest, PayloadTooLarge
from ingest.limits import RateLimiter
from plumbing.keys import KeyStore, WriteKey, ensure_dev_key

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
POLICY = TimePolicy(max_future_skew=timedelta(minutes=10), max_event_age=timedelta(days=30))
FEATURE = {"type": "feature", "feature": "share", "action": "clicked"}


def parse(items: list[Any], sent_at: datetime | None = None) -> ParsedBatch:
    return parse_events(items, sent_at, NOW, "req-1", POLICY)


def test_timestamp_is_corrected_by_the_clients_clock_offset() -> None:
    sent_at = NOW + timedelta(hours=2)  # client clock two hours fast
    batch = parse([FEATURE | {"timestamp": (sent_at - timedelta(seconds=5)).isoformat()}], sent_at)
    assert orjson.loads(batch.accepted[0])["timestamp"] == "2026-11-26T11:59:55.000Z"


def test_server_fields_are_filled_in() -> None:
    [event] = map(orjson.loads, parse([FEATURE]).accepted)
    assert event["timestamp"] == "2026-11-26T12:00:00.000Z"
    assert len(event["event_id"]) == 32
    assert (event["received_at"], event["request_id"]) == ("2026-11-26T12:00:00.000Z", "req-1")


def test_far_future_and_far_past_are_rejected() -> None:
    items = [
        FEATURE | {"timestamp": (NOW + timedelta(minutes=11)).isoformat()},
        FEATURE | {"timestamp": (NOW - timedelta(days=31)).isoformat()},
        FEATURE | {"timestamp": (NOW - timedelta(days=29)).isoformat()},
    ]
    batch = parse(items)
    assert [r.reason for r, _ in batch.rejected] == ["timestamp too far in the future", "timestamp too old"]
    assert len(batch.accepted) == 1


def test_duplicate_event_ids_in_a_batch_keep_the_first() -> None:
    batch = parse([FEATURE | {"event_id": "a"}, FEATURE | {"event_id": "a"}, FEATURE | {"event_id": "b"}])
    assert len(batch.accepted) == 2
    assert [(r.index, r.reason) for r, _ in batch.rejected] == [(1, "duplicate event_id in this batch")]


def test_unparseable_items_are_rejected_with_their_raw_text() -> None:
    batch = parse([FEATURE, Unparseable("item is not valid JSON: depth", "[[[[")])
    assert len(batch.accepted) == 1
    [(rejection, item)] = batch.rejected
    assert rejection.index == 1 and dead_letter_raw(item) == "[[[["


def test_split_body_shapes() -> None:
    assert split_body(FEATURE | {"api_key": "k"}) == BodyParts([FEATURE], None, "k")
    assert split_body({"events": [FEATURE], "sent_at": "2026-11-26T12:00:00Z"}) == BodyParts(
        [FEATURE], NOW, None
    )
    with pytest.raises(BadRequest):
        split_body({"events": [FEATURE], "extra": 1})
    with pytest.raises(PayloadTooLarge):
        split_body({"events": [FEATURE] * 1001})


def test_one_unparseable_item_costs_only_itself() -> None:
    good = orjson.dumps(FEATURE)
    bad = [b'{"value": ' + b"9" * 5000 + b"}", b'{"v": NaN}', b"[" * 10000 + b"]" * 10000, b'"\\ud800"']
    body = b'{"events": [' + b", ".join([good, *bad, good]) + b'], "sent_at": null}'
    payload, items = decode_body(body)
    assert payload == {"events": [], "sent_at": None}
    assert items is not None and len(items) == 6
    assert items[0] == FEATURE == items[5]
    assert all(isinstance(item, Unparseable) for item in items[1:5])
    with pytest.raises(BadRequest):
        decode_body(b'{"events": [1, 2')


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
    store = KeyStore(tmp_path / "keys.json")
    key = store.create("cosnap")
    assert store.authenticate(key) == WriteKey("cosnap", key[4:12])
    assert store.authenticate(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert key not in (tmp_path / "keys.json").read_text()
    dev = ensure_dev_key(store, tmp_path)
    assert ensure_dev_key(store, tmp_path) == dev
    found = store.authenticate(dev)
    assert found is not None and found.project == "default"


def test_origins_are_per_project(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    ensure_dev_key(store, tmp_path)
    assert store.origin_allowed("http://localhost:5173", "default")
    assert not store.origin_allowed("https://evil.example", "default")
    store.create("cosnap", ("https://*.cosnap.ai",))
    assert store.origin_allowed("https://app.cosnap.ai", "cosnap")
    assert not store.origin_allowed("https://app.cosnap.ai", "default")
    assert store.origin_allowed("https://app.cosnap.ai")  # some project allows it: preflight passes


def test_rate_limit_is_a_token_bucket_per_key() -> None:
    limiter = RateLimiter(events_per_s=100, burst=200)
    assert limiter.take("k1", 150, now=0) == 0
    assert limiter.take("k1", 100, now=0) == 1  # 50 left: 50 more take half a second, rounded up
    assert limiter.take("k2", 200, now=0) == 0  # another key has its own bucket
    assert limiter.take("k1", 100, now=0.5) == 0
    assert RateLimiter(events_per_s=0, burst=0).take("k", 10**6) == 0


def test_absurd_clock_offsets_are_rejected_not_crashed() -> None:
    far = datetime(9999, 12, 31, tzinfo=UTC)
    batch = parse([FEATURE | {"timestamp": "0001-01-01T00:00:00Z"}], far)
    assert [r.reason for r, _ in batch.rejected] == ["timestamp out of range"]
