"""One batch, one `POST /v1/events`, one verdict: delivered, refused for good, or retry."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from cosnap_metrics_sdk.backoff import parse_retry_after
from cosnap_metrics_sdk.events import rfc3339

# The API's limits (README, "The API in one screen"): 1,000 events and 1 MiB per request.
MAX_BATCH_EVENTS = 1000
MAX_BODY_BYTES = 1024 * 1024
# Room for `{"events":[...],"sent_at":"..."}` around the events.
ENVELOPE_BYTES = 64

_RETRYABLE = {408, 425, 429}


class Outcome(enum.Enum):
    DELIVERED = "delivered"  # 2xx: accepted events are durably in Kafka; rejected ones never will be
    REFUSED = "refused"  # the API refused the whole batch; sending it again cannot help
    RETRY = "retry"  # nothing was accepted but a later attempt may be (429, 5xx, network)


@dataclass(frozen=True, slots=True)
class Rejection:
    index: int
    reason: str


@dataclass(frozen=True, slots=True)
class SendResult:
    outcome: Outcome
    status: int | None = None
    accepted: int = 0
    rejected: tuple[Rejection, ...] = ()
    retry_after: float | None = None
    detail: str = ""


def batch_body(events: list[bytes], sent_at: datetime) -> bytes:
    """`{"events": [...], "sent_at": ...}` from already encoded events."""
    return b"".join(
        (b'{"events":[', b",".join(events), b'],"sent_at":', json.dumps(rfc3339(sent_at)).encode(), b"}")
    )


class HttpTransport:
    """Sends batches to `{url}/v1/events` with a Bearer write key.

    `send` blocks for up to `timeout` seconds and never raises for HTTP or network problems:
    they come back as a `SendResult`. Not thread-safe; the client's worker thread owns it.
    """

    def __init__(
        self,
        url: str,
        write_key: str,
        *,
        timeout: float,
        user_agent: str,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._endpoint = url.rstrip("/") + "/v1/events"
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            headers={
                "Authorization": f"Bearer {write_key}",
                "Content-Type": "application/json",
                "User-Agent": user_agent,
            },
            transport=transport,
        )

    @property
    def endpoint(self) -> str:
        return self._endpoint

    def send(self, events: list[bytes]) -> SendResult:
        body = batch_body(events, datetime.now(UTC))
        try:
            response = self._client.post(self._endpoint, content=body)
        except httpx.TransportError as exc:  # connect, read and write errors and timeouts
            return SendResult(Outcome.RETRY, detail=f"{type(exc).__name__}: {exc}")
        return classify(response)

    def close(self) -> None:
        self._client.close()


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        payload = response.json()
    except ValueError:
        return {}
    return payload if isinstance(payload, dict) else {}


def _rejections(payload: dict[str, Any]) -> tuple[Rejection, ...]:
    items = payload.get("rejected")
    if not isinstance(items, list):
        return ()
    return tuple(
        Rejection(int(item.get("index", -1)), str(item.get("reason", "")))
        for item in items
        if isinstance(item, dict)
    )


def classify(response: httpx.Response) -> SendResult:
    """Map the API's answer to what the client does with the batch."""
    status = response.status_code
    payload = _json(response)
    detail = str(payload.get("detail", "")) or response.text[:200]
    if 200 <= status < 300:
        accepted = payload.get("accepted")
        return SendResult(
            Outcome.DELIVERED,
            status,
            accepted=accepted if isinstance(accepted, int) else 0,
            rejected=_rejections(payload),
        )
    if status in _RETRYABLE or status >= 500:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        return SendResult(Outcome.RETRY, status, retry_after=retry_after, detail=detail)
    # 400 (invalid body, or every item rejected), 401/403 (write key), 413, 415, 404 (wrong url):
    # the same request would be refused again.
    return SendResult(Outcome.REFUSED, status, rejected=_rejections(payload), detail=detail)
