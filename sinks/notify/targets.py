"""Where alert state changes go besides the alerts topic: Alertmanager's API and signed webhooks.

A target turns one record of `metrics.alerts.v1` into one HTTP request and judges the answer;
when to retry, and what to do after the last try, is the notifier's business (sinks/notify/notifier.py).
Routing, grouping, silences and inhibition are Alertmanager's: it gets every state change as is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

import httpx
import orjson

from plumbing.backoff import parse_retry_after
from plumbing.webhooks import sign, signing_key
from schemas.records import AlertRecord

# Besides 5xx, the answers that say "later" rather than "never".
_RETRYABLE = {408, 425, 429}


@dataclass(frozen=True, slots=True)
class Attempt:
    """The verdict on one HTTP request: taken, refused for good, or worth another try."""

    delivered: bool
    retryable: bool = False
    error: str = ""
    retry_after: float | None = None


DELIVERED = Attempt(delivered=True)


class AlertTarget(Protocol):
    name: str

    def send(self, alert: AlertRecord, raw: bytes, delivery_id: str) -> Attempt:
        """One attempt to hand over one alert state change. Blocks up to the target's timeout;
        never raises for HTTP or network trouble (it comes back as the Attempt)."""
        ...


def display_url(url: str) -> str:
    """The URL without credentials or query (chat webhooks hide tokens there), for logs and dead letters."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"


def post(client: httpx.Client, url: str, body: bytes, headers: dict[str, str]) -> Attempt:
    try:
        response = client.post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        return Attempt(delivered=False, retryable=True, error=f"{type(exc).__name__}: {exc}")
    if response.is_success:
        return DELIVERED
    status = response.status_code
    return Attempt(
        delivered=False,
        retryable=status >= 500 or status in _RETRYABLE,
        error=f"HTTP {status}: {response.text[:200]}",
        retry_after=parse_retry_after(response.headers.get("retry-after")),
    )


def _utc(moment: datetime) -> datetime:
    # The record's times are UTC; a producer that left out the offset still meant UTC.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _rfc3339(moment: datetime) -> str:
    return _utc(moment).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AlertmanagerTarget:
    """`POST {url}/api/v2/alerts` with Alertmanager's own alert shape.

    Alertmanager resolves an alert by itself once its `endsAt` passes, so a firing alert carries
    `endsAt = now + firing_ttl` and is sent again while it fires (the notifier resends, as
    Prometheus does); a resolved one carries its `ends_at`, at the latest now, so it resolves at once.

    Alertmanager tells alerts apart by all their labels, the routing ones (`channels`, `page`)
    included, while a record's fingerprint leaves those out: a resolution that cannot know them
    (Sentry's does not say whether its alert paged) is posted with the labels its fingerprint was
    last posted firing with, so that it ends that alert.
    """

    def __init__(self, url: str, *, timeout: float, firing_ttl: timedelta, generator_url: str = "") -> None:
        self.name = f"alertmanager {display_url(url)}"
        self._endpoint = url.rstrip("/") + "/api/v2/alerts"
        self._firing_ttl = firing_ttl
        self._generator_url = generator_url
        self._client = httpx.Client(timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)))
        self._firing_labels: dict[str, dict[str, str]] = {}  # fingerprint -> labels posted firing

    def alert(self, alert: AlertRecord, now: datetime) -> dict[str, Any]:
        """One alert in Alertmanager's `postableAlert` shape; annotation values are strings."""
        value = "no data" if alert.value is None else f"{alert.value:g}"
        ends_at = now + self._firing_ttl if alert.ends_at is None else min(_utc(alert.ends_at), now)
        if alert.state == "firing":
            labels = self._firing_labels[alert.fingerprint] = alert.labels
        else:
            labels = self._firing_labels.get(alert.fingerprint, alert.labels)
        posted: dict[str, Any] = {
            "labels": labels,
            "annotations": {"value": value, "threshold": f"{alert.threshold:g}"} | alert.annotations,
            "startsAt": _rfc3339(alert.starts_at),
            "endsAt": _rfc3339(ends_at),
        }
        if self._generator_url:
            posted["generatorURL"] = self._generator_url.replace("{rule}", quote(alert.rule)).replace(
                "{fingerprint}", alert.fingerprint
            )
        return posted

    def send_all(self, alerts: list[AlertRecord]) -> Attempt:
        """Post several alerts in one request (the resend of everything firing)."""
        now = datetime.now(UTC)
        body = orjson.dumps([self.alert(alert, now) for alert in alerts])
        attempt = post(self._client, self._endpoint, body, {"content-type": "application/json"})
        if attempt.delivered:
            for alert in alerts:
                if alert.state == "resolved":
                    self._firing_labels.pop(alert.fingerprint, None)
        return attempt

    def send(self, alert: AlertRecord, raw: bytes, delivery_id: str) -> Attempt:
        del raw, delivery_id  # Alertmanager identifies alerts by their labels
        return self.send_all([alert])


class WebhookTarget:
    """The alert record as the JSON body, signed per Standard Webhooks. The signature covers the
    attempt's timestamp, so every retry is signed anew under the same `webhook-id`."""

    def __init__(self, url: str, secret: str, *, timeout: float) -> None:
        signing_key(secret)  # refuse a malformed secret at start, not at the first alert
        self.name = f"webhook {display_url(url)}"
        self._url = url
        self._secret = secret
        self._client = httpx.Client(timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)))

    def send(self, alert: AlertRecord, raw: bytes, delivery_id: str) -> Attempt:
        del alert  # the body is the record exactly as published on the alerts topic
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": delivery_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self._secret, delivery_id, timestamp, raw),
        }
        return post(self._client, self._url, raw, headers)


class ValidationTarget(WebhookTarget):
    """The receiver of `cosnap-metrics validate` (COSNAP_VALIDATE_WEBHOOK_URL): a signed webhook
    for the alerts of `rule` only; any other alert is taken without a request."""

    def __init__(self, url: str, secret: str, rule: str, *, timeout: float) -> None:
        super().__init__(url, secret, timeout=timeout)
        self.name = f"validation webhook {display_url(url)}"
        self._rule = rule

    def send(self, alert: AlertRecord, raw: bytes, delivery_id: str) -> Attempt:
        if alert.rule != self._rule:
            return DELIVERED
        return super().send(alert, raw, delivery_id)
