"""Reading a request body safely: size cap while streaming, gzip with a bomb guard, JSON."""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator
from typing import Any

import orjson

from ingest.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

MAX_BODY_BYTES = 1024 * 1024  # DESIGN §3.1: 1 MiB after decompression


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
    """Return True for a sendBeacon body (text/plain), False for JSON; 415 for anything else."""
    media = (content_type or "application/json").split(";", 1)[0].strip().lower()
    if media == "application/json":
        return False
    if media == "text/plain":
        return True
    raise UnsupportedMediaType(f"Content-Type {media!r} is not supported; send application/json")


def decode_json(body: bytes) -> Any:
    """Parse JSON strictly: no NaN/Infinity, no lone surrogates, integers within 64 bits."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from exc
