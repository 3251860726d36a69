"""Signed webhooks per Standard Webhooks (standardwebhooks.com): how Cosnap Metrics signs the
alert records it posts, and how a receiver checks them.

A delivery carries three headers: `webhook-id` (the same on every retry of one alert state
change, so a receiver can drop duplicates), `webhook-timestamp` (unix seconds of this attempt)
and `webhook-signature` (`v1,<base64 HMAC-SHA256>` of `{id}.{timestamp}.{body}`, keyed with the
bytes of the `whsec_<base64>` secret; several space-separated signatures while a secret rotates).

Receiver usage::

    from cosnap_metrics_sdk import WebhookVerificationError, verify_webhook

    try:
        alert = verify_webhook(secret, request.headers, request.body)
    except WebhookVerificationError as exc:
        return 400, str(exc)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

SECRET_PREFIX = "whsec_"  # noqa: S105 - the prefix of every secret, not a secret
# The spec's default: a signed request older (or newer) than this is refused as a replay.
DEFAULT_TOLERANCE_S = 300


class WebhookVerificationError(ValueError):
    """The request is not a genuine, fresh delivery: do not act on its body."""


class WebhookHeaderMissing(WebhookVerificationError):
    """`webhook-id`, `webhook-timestamp` or `webhook-signature` is absent or empty."""


class WebhookSignatureInvalid(WebhookVerificationError):
    """No `v1` signature matches the body: a wrong secret, or a body changed on the way."""


class WebhookTimestampOutOfRange(WebhookVerificationError):
    """The timestamp is unreadable or further than the tolerance from now: a replay, or a clock off."""


def signing_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret (the prefix is optional); ValueError if the rest
    is not base64 or is empty."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded, validate=True)
    except binascii.Error as exc:
        raise ValueError("a webhook secret is 'whsec_' followed by base64") from exc
    if not key:
        raise ValueError("the webhook secret is empty")
    return key


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value (`v1,<base64>`) for one attempt of a delivery."""
    content = b"%s.%d.%s" % (webhook_id.encode(), timestamp, body)
    digest = hmac.new(signing_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def _header(headers: Mapping[str, str], name: str) -> str:
    # HTTP header names are case-insensitive; frameworks hand them over in any case.
    for key, value in headers.items():
        if key.lower() == name and value.strip():
            return value.strip()
    raise WebhookHeaderMissing(f"missing header {name!r}")


def verify_webhook(
    secret: str,
    headers: Mapping[str, str],
    body: bytes | str,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> Any:
    """Check one received webhook and return its JSON body, decoded.

    `body` must be the raw bytes as received (a re-serialized body does not match). `now`
    (unix seconds) is for tests. Raises a `WebhookVerificationError` subclass: a missing header,
    a timestamp outside `now ± tolerance_s` (replay protection), or no matching signature
    (compared in constant time). The caller still drops repeated `webhook-id`s if it must act
    once: retries and replays within the tolerance carry a valid signature.
    """
    raw = body.encode() if isinstance(body, str) else body
    webhook_id = _header(headers, "webhook-id")
    stamp = _header(headers, "webhook-timestamp")
    signatures = _header(headers, "webhook-signature")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise WebhookTimestampOutOfRange(f"webhook-timestamp {stamp!r} is not unix seconds") from None
    skew = (time.time() if now is None else now) - timestamp
    if abs(skew) > tolerance_s:
        direction = "old" if skew > 0 else "far in the future"
        raise WebhookTimestampOutOfRange(
            f"webhook-timestamp is {abs(skew):.0f}s {direction} (tolerance {tolerance_s:.0f}s)"
        )
    expected = sign(secret, webhook_id, timestamp, raw).encode()
    for candidate in signatures.split():
        # Other versions (e.g. v1a, asymmetric) are skipped, not failed: a sender may add them.
        if candidate.startswith("v1,") and hmac.compare_digest(candidate.encode(), expected):
            return json.loads(raw)
    raise WebhookSignatureInvalid("no v1 signature matches the body")
