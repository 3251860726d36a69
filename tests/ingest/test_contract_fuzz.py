"""No input gets a 5xx: property-based fuzzing of `POST /v1/events` over the real ASGI app.

The app is the one `cosnap-metrics ingest` serves (create_app), in this process, with a fake
producer (tests/ingest/fakes.py: it acknowledges at once and refuses a record over Kafka's size
limit as the real one does); requests go through httpx's ASGI transport, so each costs the app's
own work, no sockets, no broker. That accepted events reach Kafka is proven on a real broker
(test_api.py, test_roundtrip_fuzz.py). Strategies and invariants are
in contract_strategies.py; every example is checked for: a status among 202/400/401/413/415/429,
a body matching its schema in schemas/json/, rejections with their index and a reason a person
can read, valid neighbours accepted. Examples found failing are kept below as explicit cases.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Context, Decimal, InvalidOperation, localcontext
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.app import create_app
from ingest.body import MAX_BODY_BYTES
from plumbing.keys import KeyStore
from schemas.settings import IngestSettings
from schemas.topics import Topics
from tests.ingest.contract_strategies import (
    Mutated,
    Raw,
    check_answer,
    encode,
    fuzz_settings,
    json_numbers,
    json_values,
    mutated_items,
    names_a_field,
    number_texts,
    raw_numbers,
    timestamp_values,
    valid_events,
    weird_strings,
)
from tests.ingest.fakes import FakeProducer


@dataclass
class Api:
    """The ingest app in this process, on its own event loop, entered (lifespan) once."""

    app: Any
    write_key: str
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)
    client: httpx.AsyncClient | None = None
    requests: int = 0
    items: int = 0

    def start(self) -> None:
        async def enter() -> httpx.AsyncClient:
            await self.stack.enter_async_context(self.app.router.lifespan_context(self.app))
            transport = httpx.ASGITransport(self.app, raise_app_exceptions=False)
            return await self.stack.enter_async_context(
                httpx.AsyncClient(transport=transport, base_url="http://ingest.test", timeout=60)
            )

        self.client = self.loop.run_until_complete(enter())

    def post(
        self, body: bytes, headers: dict[str, str] | None = None, *, auth: bool = True
    ) -> httpx.Response:
        assert self.client is not None
        sent = {"Content-Type": "application/json"}
        if auth:
            sent["Authorization"] = f"Bearer {self.write_key}"
        self.requests += 1
        return self.loop.run_until_complete(
            self.client.post("/v1/events", content=body, headers=sent | (headers or {}))
        )

    def close(self) -> None:
        self.loop.run_until_complete(self.stack.aclose())
        self.loop.close()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    topics = Topics(f"t{uuid.uuid4().hex[:10]}.")
    data_dir: Path = tmp_path_factory.mktemp("fuzz")
    key = KeyStore(data_dir / "write-keys.json").create("fuzz")
    settings = IngestSettings(
        data_dir=data_dir,
        kafka_bootstrap="127.0.0.1:9",  # never dialled: the fake producer stands in for Kafka
        topic_prefix=topics.prefix,
        rate_limit_events_per_s=0,  # the rate limit has tests of its own; here it would only say 429
    )
    running = Api(create_app(settings, producer=FakeProducer()), key)
    running.start()
    yield running
    running.close()
    print(f"\nfuzzing: {running.requests} requests, {running.items} generated items")


# -- items in batches ----------------------------------------------------------------------------


@st.composite
def batches(draw: st.DrawFn) -> list[dict[str, Any] | Mutated]:
    """Valid events and mutated items, mixed."""
    return draw(st.lists(st.one_of(valid_events(), mutated_items()), min_size=3, max_size=16))


@fuzz_settings(600)
@given(batch=batches(), ascii_only=st.booleans(), sent_at=st.one_of(st.none(), st.just("now")))
def test_items_keep_the_contract_and_spare_their_neighbours(
    api: Api, batch: list[dict[str, Any] | Mutated], ascii_only: bool, sent_at: str | None
) -> None:
    items = [entry.item if isinstance(entry, Mutated) else entry for entry in batch]
    payload: dict[str, Any] = {"events": items}
    if sent_at:
        payload["sent_at"] = datetime.now(UTC).isoformat()
    body = encode(payload, ascii_only=ascii_only)
    response = api.post(body)
    api.items += len(items)
    answer = check_answer(
        response.status_code, response.content, None if "detail" in response.text else len(items)
    )
    if "detail" in answer:  # refused whole: only a body over the cap may cost the valid items
        assert response.status_code == 413 and len(body) > MAX_BODY_BYTES, (answer, len(body))
        return
    reasons = {rejection["index"]: rejection["reason"] for rejection in answer["rejected"]}
    for index, entry in enumerate(batch):
        if isinstance(entry, Mutated):
            if index in reasons:
                assert names_a_field(reasons[index], entry.fields), (reasons[index], entry.fields)
        else:
            assert index not in reasons, (reasons[index], entry)


@fuzz_settings(400)
@given(item=mutated_items())
def test_a_single_item_body_keeps_the_contract(api: Api, item: Mutated) -> None:
    response = api.post(encode(item.item))
    api.items += 1
    answer = check_answer(response.status_code, response.content, None)
    if "rejected" in answer and answer["rejected"]:
        assert [r["index"] for r in answer["rejected"]] == [0]


# -- numbers ---------------------------------------------------------------------------------------

_WIDE = Context(prec=100_000, Emax=999_999_999_999_999_999, Emin=-999_999_999_999_999_999)


def amount_accepted(sent: Any) -> bool:
    """The documented rule, computed another way (exact arithmetic in a very wide context): an
    amount is accepted when it is a plain decimal (JSON number, or ASCII text of at most 64
    characters) whose written exponent is within ±64, with at most 9 decimals once trailing
    zeros are dropped, and at most 1e9 in size."""
    if isinstance(sent, Raw):
        try:
            sent = json.loads(sent.token)
        except ValueError:
            return False
        if isinstance(sent, float) and not Decimal(repr(sent)).is_finite():
            return False
    if isinstance(sent, bool):
        return False
    if isinstance(sent, float):
        sent = repr(sent)
    if isinstance(sent, str) and (len(sent) > 64 or not all(c in "0123456789+-.eE" for c in sent)):
        return False
    try:
        with localcontext(_WIDE):
            value = Decimal(sent)
            if not value.is_finite():
                return False
            written = value.as_tuple().exponent
            assert isinstance(written, int)
            if abs(written) > 64:
                return False
            if value == 0:
                return True
            reduced = value.normalize()
            exponent = reduced.as_tuple().exponent
            assert isinstance(exponent, int)
            return exponent >= -9 and abs(value) <= Decimal(10**9)
    except (InvalidOperation, ValueError):
        return False


amounts = st.one_of(number_texts(), json_numbers, raw_numbers, weird_strings)


@fuzz_settings(400)
@given(sent=st.lists(amounts, min_size=10, max_size=40))
def test_amounts_are_accepted_exactly_when_the_store_holds_them(api: Api, sent: list[Any]) -> None:
    items = [{"type": "revenue", "name": "n", "currency": "USD", "amount": amount} for amount in sent]
    response = api.post(encode({"events": items}))
    api.items += len(items)
    answer = check_answer(response.status_code, response.content, len(items))
    reasons = {rejection["index"]: rejection["reason"] for rejection in answer["rejected"]}
    for index, amount in enumerate(sent):
        accepted = index not in reasons
        assert accepted == amount_accepted(amount), (amount, reasons.get(index))
        if not accepted:
            assert "amount" in reasons[index] or "JSON" in reasons[index], reasons[index]


@fuzz_settings(200)
@given(
    sent=st.lists(st.one_of(number_texts(), json_numbers, raw_numbers, json_values), min_size=10, max_size=40)
)
def test_performance_values_never_get_a_5xx(api: Api, sent: list[Any]) -> None:
    items = [{"type": "performance", "metric": "m", "unit": "ms", "value": value} for value in sent]
    response = api.post(encode({"events": items}))
    api.items += len(items)
    answer = check_answer(response.status_code, response.content, len(items))
    for rejection in answer["rejected"]:
        assert "value" in rejection["reason"] or "JSON" in rejection["reason"], rejection


@fuzz_settings(200)
@given(
    stamp=st.lists(timestamp_values(), min_size=10, max_size=30),
    sent_at=st.one_of(st.none(), timestamp_values()),
)
def test_timestamps_at_every_edge(api: Api, stamp: list[Any], sent_at: Any) -> None:
    items = [{"type": "feature", "feature": "f", "action": "a", "timestamp": ts} for ts in stamp]
    payload: dict[str, Any] = {"events": items}
    if sent_at is not None:
        payload["sent_at"] = sent_at
    response = api.post(encode(payload))
    api.items += len(items)
    answer = check_answer(response.status_code, response.content, None if sent_at is not None else len(items))
    if "detail" in answer:
        assert "sent_at" in answer["detail"], answer
    for rejection in answer.get("rejected", []):
        assert "timestamp" in rejection["reason"], rejection


# -- whole bodies: shapes, encodings, media types, keys -------------------------------------------

GZIP_BOMB = gzip.compress(b'{"events": [' + b" " * (8 * MAX_BODY_BYTES) + b"]}")


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, dict[str, str], bool, str]:
    """(body, headers, send the write key in the header, what was done): any JSON at the top, a
    batch of anything, batch fields of every type, bytes that are no JSON at all; then gzip
    (whole, cut short, a bomb), an unknown encoding, a media type and charset of every kind, and
    the write key in the header, in the body, wrong or missing."""
    valid = st.lists(valid_events(), min_size=1, max_size=3)
    shape = draw(st.sampled_from(["any", "events", "fields", "single", "bytes"]))
    key_in_body = draw(st.sampled_from([None, "ok", "wrong", "not-a-string"]))
    payload: Any
    if shape == "any":
        payload = draw(json_values)
    elif shape == "events":
        payload = {"events": draw(st.one_of(json_values, st.lists(json_values, max_size=4), valid))}
    elif shape == "fields":
        payload = {"events": draw(valid)}
        payload |= draw(st.dictionaries(st.sampled_from(["sent_at", "api_key"]) | weird_strings, json_values))
        if draw(st.booleans()):
            payload["sent_at"] = draw(timestamp_values())
    elif shape == "single":
        payload = draw(valid_events())
    else:
        payload = None
    if isinstance(payload, dict) and key_in_body:
        payload["api_key"] = {"ok": "KEY", "wrong": "cmk_wrong", "not-a-string": ["KEY"]}[key_in_body]
    body = (
        draw(st.binary(max_size=300)) if shape == "bytes" else encode(payload, ascii_only=draw(st.booleans()))
    )
    headers: dict[str, str] = {}
    media = draw(
        st.sampled_from(
            [
                "application/json",
                "application/json; charset=utf-8",
                "application/json;charset=UTF-8",
                "APPLICATION/JSON",
                "text/plain",
                "text/plain;charset=UTF-8",
                "application/json; charset=utf-16",
                "application/json; charset=latin-1",
                "application/x-www-form-urlencoded",
                "multipart/form-data; boundary=x",
                "application/json; charset=",
                "",
            ]
        )
    )
    headers["Content-Type"] = media
    if media.endswith("utf-16"):
        body = body.decode("utf-8", "replace").encode("utf-16")
    encoding = draw(
        st.sampled_from(["", "", "gzip", "gzip-cut", "gzip-bomb", "br", "deflate", "GZIP", "gzip, br"])
    )
    if encoding == "gzip" or encoding == "GZIP":
        body = gzip.compress(body)
    elif encoding == "gzip-cut":
        body = gzip.compress(body)[: draw(st.integers(0, 20))]
    elif encoding == "gzip-bomb":
        body = GZIP_BOMB
    if encoding:
        headers["Content-Encoding"] = encoding.removesuffix("-cut").removesuffix("-bomb")
    auth = draw(st.sampled_from(["bearer", "bearer", "basic", "wrong", "none", "malformed-basic", "empty"]))
    if auth == "basic":
        headers["Authorization"] = "Basic KEYB64"
    elif auth == "wrong":
        headers["Authorization"] = "Bearer cmk_not-a-key"
    elif auth == "malformed-basic":
        headers["Authorization"] = "Basic !!!not base64"
    elif auth == "empty":
        headers["Authorization"] = ""
    return body, headers, auth == "bearer", f"{shape}/{key_in_body}/{media}/{encoding}/{auth}"


@fuzz_settings(800)
@given(request=requests())
def test_whole_bodies_keep_the_contract(api: Api, request: tuple[bytes, dict[str, str], bool, str]) -> None:
    body, headers, bearer, what = request
    body = body.replace(b"KEY", api.write_key.encode())
    if headers.get("Authorization") == "Basic KEYB64":
        headers["Authorization"] = "Basic " + base64.b64encode(f"{api.write_key}:".encode()).decode()
    response = api.post(body, headers, auth=bearer)
    api.items += 1
    answer = check_answer(response.status_code, response.content, None)
    if not bearer:  # the key in the header is checked first; in the body, after decoding it
        return
    media, encoding = headers["Content-Type"], headers.get("Content-Encoding", "")
    if encoding not in ("", "gzip", "GZIP") or "utf-16" in media or "latin-1" in media:
        assert response.status_code == 415, (what, answer)
    elif body is GZIP_BOMB:
        assert response.status_code in (413, 415), (what, answer)  # 415: a media type refused first


@pytest.mark.parametrize(
    ("events", "status"),
    [(None, 400), ([], 400), ("a string", 400), ({"type": "feature"}, 400), (1000, 202), (1001, 413)],
)
def test_batch_shapes(api: Api, events: Any, status: int) -> None:
    if isinstance(events, int):
        events = [{"type": "feature", "feature": "f", "action": "a"} for _ in range(events)]
    response = api.post(encode({"events": events}))
    answer = check_answer(response.status_code, response.content, None)
    assert response.status_code == status, answer
    if status == 202:
        assert answer == {"accepted": 1000, "rejected": []}


# -- examples the fuzzers found, kept as explicit cases -------------------------------------------

REGRESSIONS: dict[str, tuple[bytes, int, str]] = {
    # issue 12: decimal.Overflow in the amount check answered 500
    "amount-1e999999999": (
        b'{"type":"revenue","name":"x","amount":"1e999999999","currency":"USD"}',
        400,
        "amount has an exponent out of range",
    ),
    "amount--1e999999999": (
        b'{"type":"revenue","name":"x","amount":"-1e999999999","currency":"USD"}',
        400,
        "amount has an exponent out of range",
    ),
    # an unknown field named by a control character was quoted raw in the reason
    "unknown-field-0x1f": (
        b'{"type":"feature","feature":"f","action":"a","\\u001f":1}',
        400,
        "\\u001f: Extra inputs are not permitted",
    ),
    # `feature` is both an event type and a field: the reason lost the field's name
    "empty-feature": (
        b'{"type":"feature","feature":"","action":"a"}',
        400,
        "feature: String should have at least 1 character",
    ),
    # the `type` matching no event was quoted whole in the reason (100 KB here)
    "huge-type": (
        b'{"type":"' + b"x" * 100_000 + b'"}',
        400,
        "type: must be revenue, conversion, feature or performance",
    ),
    # a JSON body in UTF-16 was refused as "not valid JSON"
    "utf-16": (
        '{"type":"feature","feature":"f","action":"a"}'.encode("utf-16"),
        415,
        "charset 'utf-16' is not supported; send UTF-8",
    ),
    # unknown batch fields were all named, whole, in the detail
    "unknown-batch-fields": (
        b'{"events":[{"type":"feature","feature":"f","action":"a"}],'
        + b",".join(b'"' + bytes([97 + i]) * 5000 + b'":1' for i in range(20))
        + b"}",
        400,
        "unknown batch fields: aaaaaaaa",
    ),
}


@pytest.mark.parametrize("case", list(REGRESSIONS))
def test_examples_found_by_fuzzing(api: Api, case: str) -> None:
    body, status, reason = REGRESSIONS[case]
    headers = {"Content-Type": "application/json; charset=utf-16"} if case == "utf-16" else {}
    response = api.post(body, headers)
    answer = check_answer(response.status_code, response.content, None)
    assert response.status_code == status, answer
    said = answer["detail"] if "detail" in answer else answer["rejected"][0]["reason"]
    assert reason in said, said
    assert len(said) <= 300, len(said)
