"""Webhook signing: the server's copy (plumbing.webhooks) and the SDK's (cosnap_metrics_sdk.webhooks)
share no code, so both are held to the Standard Webhooks spec's own vector, and what the server
signs the SDK verifies."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

import pytest
from cosnap_metrics_sdk import WebhookVerificationError, verify_webhook
from cosnap_metrics_sdk import webhooks as sdk
from hypothesis import given
from hypothesis import strategies as st

import plumbing.webhooks as server

# The example of the Standard Webhooks specification (standardwebhooks.com).
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # noqa: S105 - the spec's published test secret
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TIMESTAMP = 1614265330
PAYLOAD = b'{"test": 2432232314}'
SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def headers(signature: str, webhook_id: str = MSG_ID, timestamp: int = TIMESTAMP) -> dict[str, str]:
    return {"webhook-id": webhook_id, "webhook-timestamp": str(timestamp), "webhook-signature": signature}


@pytest.mark.parametrize("sign", [server.sign, sdk.sign], ids=["server", "sdk"])
def test_both_copies_reproduce_the_spec_vector(sign: Callable[[str, str, int, bytes], str]) -> None:
    assert sign(SECRET, MSG_ID, TIMESTAMP, PAYLOAD) == SIGNATURE
    # The prefix is optional: the key is the base64 part.
    assert sign(SECRET.removeprefix("whsec_"), MSG_ID, TIMESTAMP, PAYLOAD) == SIGNATURE


def test_the_sdk_verifies_the_spec_vector_and_refuses_a_changed_one() -> None:
    assert verify_webhook(SECRET, headers(SIGNATURE), PAYLOAD, now=TIMESTAMP) == {"test": 2432232314}
    # Several signatures (a secret being rotated): one matching is enough.
    rotated = f"v1,{'A' * 44} {SIGNATURE}"
    assert verify_webhook(SECRET, headers(rotated), PAYLOAD, now=TIMESTAMP + 299) == {"test": 2432232314}
    with pytest.raises(WebhookVerificationError):
        verify_webhook(SECRET, headers(SIGNATURE), b'{"test": 2432232315}', now=TIMESTAMP)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(SECRET, headers(SIGNATURE, webhook_id="msg_other"), PAYLOAD, now=TIMESTAMP)
    with pytest.raises(WebhookVerificationError):  # outside the tolerance: a replay
        verify_webhook(SECRET, headers(SIGNATURE), PAYLOAD, now=TIMESTAMP + 301)


@given(
    key=st.binary(min_size=1, max_size=64),
    webhook_id=st.from_regex(r"[A-Za-z0-9_-]{1,40}", fullmatch=True),
    timestamp=st.integers(min_value=0, max_value=2**40),
    body=st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=20), max_size=4).map(
        lambda value: json.dumps(value).encode()
    ),
)
def test_what_the_server_signs_the_sdk_verifies(
    key: bytes, webhook_id: str, timestamp: int, body: bytes
) -> None:
    secret = "whsec_" + base64.b64encode(key).decode()
    signature = server.sign(secret, webhook_id, timestamp, body)
    assert signature == sdk.sign(secret, webhook_id, timestamp, body)
    assert verify_webhook(
        secret, headers(signature, webhook_id, timestamp), body, now=timestamp
    ) == json.loads(body)


@pytest.mark.parametrize("secret", ["whsec_", "whsec_not base64!", ""])
def test_both_copies_refuse_a_secret_that_is_no_key(secret: str) -> None:
    for signing_key in (server.signing_key, sdk.signing_key):
        with pytest.raises(ValueError):
            signing_key(secret)
