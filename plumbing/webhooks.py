"""Signing of the webhooks the pipeline posts, per Standard Webhooks (standardwebhooks.com).

A delivery carries `webhook-id` (the same on every retry of one alert state change),
`webhook-timestamp` (unix seconds of this attempt) and `webhook-signature` (`v1,<base64
HMAC-SHA256>` of `{id}.{timestamp}.{body}`, keyed with the bytes of the `whsec_<base64>`
secret). Receivers verify with the SDK's `verify_webhook`; the SDK keeps its own copy of these
few lines so that server and client share no code, and both are tested against the spec's vectors.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

SECRET_PREFIX = "whsec_"  # noqa: S105 - the prefix of every secret, not a secret


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
