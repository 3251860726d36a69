"""Reading a request body safely: size cap while streaming, gzip with a bomb guard, JSON."""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson

from ingest.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from schemas.records import dead_letter_raw_bytes

MAX_BODY_BYTES = 1024 * 1024  # 1 MiB after decompression (README, "The API in one screen")


async def read_capped(
    chunks: AsyncIterator[bytes], content_length: str | None, cap: int = MAX_BODY_BYTES
) -> bytes:
    """Collect the body, refusing it (413) as soon as it passes `cap` bytes, before the rest
    is read, whether or not the client declared a Content-Length."""
    if content_length is not None and content_length.isdigit() and int(content_length) > cap:
        raise PayloadTooLarge(f"body over {cap} bytes")
    received = bytearray()
    async for chunk in chunks:
        received += chunk
        if len(received) > cap:
            raise PayloadTooLarge(f"body over {cap} bytes")
    return bytes(received)


def decompress(body: bytes, content_encoding: str | None, cap: int = MAX_BODY_BYTES) -> bytes:
    """Undo `Content-Encoding: gzip`, inflating at most `cap` bytes (a bomb stops there)."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding != "gzip":
        raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not supported; use gzip or none")
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        data = inflater.decompress(body, cap + 1)
    except zlib.error as exc:
        raise BadRequest(f"body is not valid gzip: {exc}") from exc
    if len(data) > cap or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"decompressed body over {cap} bytes")
    return data


def check_content_type(content_type: str | None) -> bool:
    """Return True for a sendBeacon body (text/plain), False for JSON; 415 for anything else,
    and for a charset other than UTF-8 (JSON is UTF-8, RFC 8259; a UTF-16 body would otherwise
    be refused as "not valid JSON")."""
    media, *parameters = (content_type or "application/json").split(";")
    media = media.strip().lower()
    if media not in ("application/json", "text/plain"):
        raise UnsupportedMediaType(f"Content-Type {media!r} is not supported; send application/json")
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        charset = value.strip().strip('"').lower()
        if name.strip().lower() == "charset" and charset not in ("utf-8", "utf8"):
            raise UnsupportedMediaType(f"charset {charset!r} is not supported; send UTF-8")
    return media == "text/plain"


@dataclass(frozen=True, slots=True)
class Unparseable:
    """A batch item that is not valid JSON on its own; it is rejected with `reason`."""

    reason: str
    raw: str


_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{},:]', re.DOTALL)


def _scan_events(body: bytes) -> tuple[bytes, list[bytes]] | None:
    """Find the raw items of a top-level `"events": [...]` without parsing them.

    Returns the body with that array emptied and each item's bytes, or None when no such array
    exists. Used only when the whole body failed to parse, so that one bad item (a 5,000-digit
    number, NaN, a lone surrogate, 10,000 levels of nesting) costs only itself.
    """
    depth = 0
    recent: list[bytes] = []  # the last tokens seen at depth 1
    items: list[bytes] = []
    start = item_start = -1
    for match in _TOKEN.finditer(body):
        token = match.group()
        if start >= 0:  # inside the events array
            if token in (b"[", b"{"):
                depth += 1
            elif token in (b"]", b"}"):
                depth -= 1
                if depth == 1:
                    items.append(body[item_start : match.start()])
                    items = [item for item in items if item.strip()]
                    return body[:start] + body[match.start() :], items
            elif token == b"," and depth == 2:
                items.append(body[item_start : match.start()])
                item_start = match.end()
            continue
        if token in (b"[", b"{"):
            if token == b"[" and depth == 1 and recent[-2:] == [b'"events"', b":"]:
                start = item_start = match.end()
            depth += 1
        elif token in (b"]", b"}"):
            depth -= 1
        elif depth == 1:
            recent = [*recent[-1:], token]
    return None


def decode_body(body: bytes) -> tuple[Any, list[Any] | None]:
    """Parse the body. Returns (payload, None) when it is valid JSON; when it is not, but it is a
    batch whose `events` array can be delimited, returns (the batch without its events, items)
    where each item is its parsed JSON or an `Unparseable`. Raises BadRequest otherwise."""
    try:
        return orjson.loads(body), None
    except orjson.JSONDecodeError as exc:
        whole_body_error = exc
    scanned = _scan_events(body)
    if scanned is None:
        raise BadRequest(f"body is not valid JSON: {whole_body_error}")
    skeleton, raw_items = scanned
    try:
        payload = orjson.loads(skeleton)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from exc
    items: list[Any] = []
    for raw in raw_items:
        try:
            items.append(orjson.loads(raw))
        except orjson.JSONDecodeError as exc:
            items.append(Unparseable(f"item is not valid JSON: {exc}", dead_letter_raw_bytes(raw)))
    return payload, items


def decode_exact(body: bytes) -> Any:
    """Parse a body that must be valid JSON as a whole, keeping each number as the decimal its
    text spells (a `Decimal`, never a float), so that an amount sent as a JSON number keeps every
    digit. Validity is orjson's, as for `decode_body` (UTF-8, no NaN, no lone surrogate, nesting
    bounded); the numbers are then read by the standard library. BadRequest otherwise."""
    try:
        orjson.loads(body)
        return json.loads(body, parse_float=Decimal, parse_int=Decimal)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from exc
    except RecursionError as exc:  # the standard library nests less deeply than orjson
        raise BadRequest("body is not valid JSON: nested too deeply") from exc


def _number_text(value: Any) -> orjson.Fragment:
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value))  # a JSON number's Decimal writes back as a JSON number
    raise TypeError(f"{type(value).__name__} is not JSON")


def dumps_exact(value: Any, *, sort_keys: bool = False) -> bytes:
    """`value` as JSON, numbers read by `decode_exact` written as they were sent; with
    `sort_keys`, the keys of every object in order, so that equal values are equal bytes. Raises
    orjson.JSONEncodeError for what JSON cannot hold (more than 254 levels of nesting)."""
    return orjson.dumps(value, default=_number_text, option=orjson.OPT_SORT_KEYS if sort_keys else None)


def json_path(value: Any, *keys: str) -> Any:
    """What a parsed JSON body holds at `keys` (`json_path(body, "context", "app", "version")`),
    or None when a step is missing or not an object."""
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value
