"""Sentry for every service, when COSNAP_SENTRY_DSN (or SENTRY_DSN) is set.

What reaches Sentry: unhandled exceptions of the FastAPI apps (the ingest API, the sink's query
service) with their request, uncaught exceptions of a process or a thread, and every log record
at ERROR or above. The pipeline reports a failure on a Kafka record by logging it with the
record's context in `extra=` (topic, partition, offset, table, request ids); Sentry's logging
integration puts that context in the event's extra data, and `before_send` makes the fields
people search by into tags.

`before_send` also removes secrets before anything leaves the process: Authorization and Cookie
headers wherever they appear, every write key (`cmk_...`) and webhook secret (`whsec_...`) in
any string, and the literal secrets the service holds, in whatever form Sentry would print them.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterable
from importlib.metadata import version
from typing import Any

import sentry_sdk
from cosnap_metrics_sdk.webhooks import SECRET_PREFIX, signing_key
from sentry_sdk.integrations.atexit import AtexitIntegration
from sentry_sdk.integrations.fastapi import FastApiIntegration
from sentry_sdk.integrations.starlette import StarletteIntegration

from ingest.keys import KEY_PATTERN
from schemas.settings import CommonSettings

FILTERED = "[Filtered]"
# Header (and cookie) names, compared after lower-casing and with `_` as `-` (WSGI-style names).
_SECRET_NAMES = frozenset({"authorization", "proxy-authorization", "cookie", "cookies", "set-cookie"})
_WEBHOOK_SECRET = re.escape(SECRET_PREFIX) + r"[A-Za-z0-9+/=]+"
# Context fields of log records that become tags of the event.
_TAGGED = ("request_id", "topic", "partition", "offset", "table")

log = logging.getLogger("cosnap.sentry")


def secret_forms(secret: str) -> list[str]:
    """`secret` (a `whsec_<base64>` webhook secret) as it may appear in an event: whole, its base64
    part, and the signing key's bytes as Sentry prints a local variable holding them."""
    if not secret:
        return []
    forms = [secret, secret.removeprefix(SECRET_PREFIX)]
    with contextlib.suppress(ValueError):  # not base64: the notifier refuses to start with it
        forms.append(repr(signing_key(secret))[2:-1])
    return forms


class Scrubber:
    """Sentry's `before_send`: the event without secrets, tagged with the service and with the
    context of the log record it came from. Called on the thread that captured the event."""

    def __init__(self, service: str, secrets: Iterable[str] = ()) -> None:
        literals = sorted({s for s in secrets if s}, key=len, reverse=True)
        self._service = service
        self._secret = re.compile("|".join([KEY_PATTERN.pattern, _WEBHOOK_SECRET, *map(re.escape, literals)]))

    def __call__(self, event: dict[str, Any], _hint: dict[str, Any]) -> dict[str, Any]:
        scrubbed: dict[str, Any] = self._scrub(event)
        tags = scrubbed.get("tags")
        if not isinstance(tags, dict):
            tags = scrubbed["tags"] = {}
        tags["service"] = self._service
        extra = scrubbed.get("extra") or {}
        for name in _TAGGED:
            if isinstance(extra.get(name), str | int):
                tags.setdefault(name, str(extra[name]))
        request_ids = extra.get("request_ids")
        if isinstance(request_ids, list) and len(request_ids) == 1:
            tags.setdefault("request_id", request_ids[0])
        return scrubbed

    def _scrub(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: FILTERED if _secret_name(k) else self._scrub(v) for k, v in value.items()}
        if isinstance(value, list):
            # Headers may come as [name, value] pairs.
            if len(value) == 2 and _secret_name(value[0]):
                return [value[0], FILTERED]
            return [self._scrub(v) for v in value]
        if isinstance(value, str):
            return self._secret.sub(FILTERED, value)
        return value


def _secret_name(name: object) -> bool:
    """Whether `name` names a secret header: `Authorization`, `HTTP_COOKIE`, or `b'cookie'` (how
    Sentry prints the bytes names of an ASGI scope's headers in a frame's local variables)."""
    if not isinstance(name, str):
        return False
    bare = name.lower().removeprefix("b'").removesuffix("'").replace("_", "-").removeprefix("http-")
    return bare in _SECRET_NAMES


def _log_pending(pending: int, timeout: float) -> None:
    """At exit, instead of Sentry's plain-text line on stderr (logs are JSON)."""
    log.info("sending %d pending Sentry events (up to %.0f s)", pending, timeout)


def sentry_options(service: str, settings: CommonSettings, secrets: Iterable[str] = ()) -> dict[str, Any]:
    """The arguments of `sentry_sdk.init` for `service`; `secrets` are scrubbed besides write keys,
    webhook secrets, and Authorization and Cookie headers."""
    return {
        "dsn": settings.sentry_dsn.get_secret_value(),
        "release": settings.release or f"cosnap-metrics@{version('cosnap-metrics')}",
        "environment": settings.environment,
        "before_send": Scrubber(service, secrets),
        "integrations": [
            StarletteIntegration(),
            FastApiIntegration(),
            AtexitIntegration(callback=_log_pending),
        ],
    }


def init_sentry(service: str, settings: CommonSettings, secrets: Iterable[str] = ()) -> None:
    """Start Sentry in this process if a DSN is configured; otherwise nothing is sent anywhere."""
    if settings.sentry_dsn.get_secret_value():
        sentry_sdk.init(**sentry_options(service, settings, secrets))
