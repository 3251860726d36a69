"""Sentry for every service, when COSNAP_SENTRY_DSN (or SENTRY_DSN) is set.

What reaches Sentry: unhandled exceptions of the FastAPI apps (the ingest API, the sink's query
service) with their request, uncaught exceptions of a process or a thread, and every log record
at ERROR or above. The pipeline reports a failure on a Kafka record by logging it with the
record's context in `extra=` (topic, partition, offset, table, request ids); Sentry's logging
integration puts that context in the event's extra data, and `before_send` makes the fields
people search by into tags.

What never reaches Sentry: frame-local variables and request bodies (the SDK is told not to
collect them), secrets, and the identities of the app's users. `before_send` and
`before_breadcrumb` remove, before anything leaves the process: Authorization and Cookie
headers wherever they appear, every write key (`cmk_...`) and webhook secret (`whsec_...`) in
any string, the literal secrets the service holds in whatever form Sentry would print them,
credentials in URLs; `user_id`, `anonymous_id`, `session_id`, `email` and `ip_address` fields
(as keys of a mapping, or written `name: value` / `name=value` inside a string: JSON, a repr, a
query string), the values of every event's `tags` map, every e-mail-shaped string, the client
addresses of forwarding headers, and the input values pydantic quotes in its validation errors.

Tracing (docs/reference.md, "Tracing"): with `COSNAP_TRACES_SAMPLE_RATE` (or
`SENTRY_TRACES_SAMPLE_RATE`) above 0 the ingest's requests are transactions, and a sampled one's
trace travels with the records it wrote, in the `sentry-trace` and `baggage` Kafka headers
(`trace_headers`, added by plumbing.kafka.AckedProducer). The worker and the sink continue the
trace of a sampled record only (`sampled_trace`): an unsampled record costs a look at its few
headers, nothing more. `COSNAP_PROFILES_SAMPLE_RATE` (`SENTRY_PROFILES_SAMPLE_RATE`) profiles that
share of the transactions.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from importlib.metadata import version
from typing import Any

import sentry_sdk
from sentry_sdk.integrations.atexit import AtexitIntegration
from sentry_sdk.integrations.fastapi import FastApiIntegration
from sentry_sdk.integrations.starlette import StarletteIntegration
from sentry_sdk.tracing import Span

from plumbing.webhooks import SECRET_PREFIX, signing_key
from schemas.keys import KEY_PATTERN
from schemas.settings import CommonSettings

FILTERED = "[Filtered]"
# Header (and cookie) names, compared after lower-casing and with `_` as `-` (WSGI-style names).
# Forwarding headers hold the addresses of the app's users.
_SECRET_NAMES = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "cookies",
        "set-cookie",
        "x-forwarded-for",
        "x-real-ip",
        "forwarded",
    }
)
_WEBHOOK_SECRET = re.escape(SECRET_PREFIX) + r"[A-Za-z0-9+/=]+"
_URL_CREDENTIALS = r"(?<=://)[^/\s:@]+:[^/\s@]+(?=@)"
# Fields naming a person (compared lower-cased, without `_` and `-`: `userId`, `user-id`).
_IDENTITY_NAMES = ("user_id", "anonymous_id", "session_id", "email", "ip_address")
_IDENTITY_KEYS = frozenset(name.replace("_", "") for name in _IDENTITY_NAMES)
# `user_id` written inside a string with its value: `"user_id": "a"` (JSON, also escaped inside
# JSON), `'user_id': 'a'` (a dict's repr), `user_id='a'` (a model's repr), `user_id=a` (a query
# string, logfmt). The value is a quoted string or runs to the next separator.
_IDENTITY_IN_TEXT = re.compile(
    r"""(?P<key>(?<![A-Za-z0-9])\\?["']?(?:"""
    + "|".join(name.replace("_", "[_-]?") for name in _IDENTITY_NAMES)
    + r""")\\?["']?\s*[:=]\s*)"""
    r"""(?P<value>\\".*?\\"|"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[^\s&,;)}\]"']+)""",
    re.IGNORECASE,
)
# The start of a tags map inside a string: `"tags": {`, `'tags': {`, `tags={`.
_TAGS_IN_TEXT = re.compile(r"""(?<![A-Za-z0-9_])\\?["']?tags\\?["']?\s*[:=]\s*\{""", re.IGNORECASE)
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
# Pydantic quotes what it was given: `[type=..., input_value='a@b.c', input_type=str]`.
_PYDANTIC_INPUT = re.compile(r"(?<=input_value=).*?(?=, input_type=)")
# Fields of an event Sentry sets from the configuration, left as they are (a release such as
# `app@1.0.0-rc.ab` looks like an e-mail address).
_SETTINGS_FIELDS = frozenset({"release", "environment", "dist", "sdk", "platform", "modules"})
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
    """Sentry's `before_send`: the event without secrets or identities, tagged with the service
    and with the context of the log record it came from. Called on the thread that captured the
    event. `breadcrumb` is `before_breadcrumb`: the same removal on each breadcrumb as it is
    recorded."""

    def __init__(self, service: str, secrets: Iterable[str] = ()) -> None:
        literals = sorted({s for s in secrets if s}, key=len, reverse=True)
        self._service = service
        self._secret = re.compile(
            "|".join([KEY_PATTERN.pattern, _WEBHOOK_SECRET, _URL_CREDENTIALS, *map(re.escape, literals)])
        )

    def __call__(self, event: dict[str, Any], _hint: dict[str, Any]) -> dict[str, Any]:
        scrubbed: dict[str, Any] = {
            name: value if name in _SETTINGS_FIELDS else self._scrub(value)
            for name, value in event.items()
            if name not in ("user", "tags")
        }
        # Sentry's own tags (set by this module and the integrations) keep their names.
        tags = event.get("tags")
        tags = {str(k): self._scrub(v) for k, v in tags.items()} if isinstance(tags, dict) else {}
        scrubbed["tags"] = tags
        tags["service"] = self._service
        extra = scrubbed.get("extra") or {}
        for name in _TAGGED:
            if isinstance(extra.get(name), str | int):
                tags.setdefault(name, str(extra[name]))
        request_ids = extra.get("request_ids")
        if isinstance(request_ids, list) and len(request_ids) == 1:
            tags.setdefault("request_id", request_ids[0])
        return scrubbed

    def breadcrumb(self, crumb: dict[str, Any], _hint: dict[str, Any]) -> dict[str, Any]:
        scrubbed: dict[str, Any] = self._scrub(crumb)
        return scrubbed

    def _scrub(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {self._text(str(k)): self._field(str(k), v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            # Headers may come as [name, value] pairs.
            if len(value) == 2 and _secret_name(value[0]):
                return [value[0], FILTERED]
            return [self._scrub(v) for v in value]
        if isinstance(value, str):
            return self._text(value)
        return value

    def _field(self, name: str, value: Any) -> Any:
        if _secret_name(name) or _identity_name(name):
            return FILTERED
        if name.lower() == "tags":  # an event's tags map: its values are the app's data
            return {self._text(str(k)): FILTERED for k in value} if isinstance(value, dict) else FILTERED
        return self._scrub(value)

    def _text(self, text: str) -> str:
        text = self._secret.sub(FILTERED, text)
        text = _PYDANTIC_INPUT.sub(FILTERED, text)
        text = _IDENTITY_IN_TEXT.sub(_filtered_value, text)
        text = _filter_tag_maps(text)
        return _EMAIL.sub(FILTERED, text)


def _filtered_value(match: re.Match[str]) -> str:
    """`name: [Filtered]`, keeping the quotes the value had (`"`, `'`, or an escaped `\\"`)."""
    value = match["value"]
    quote = value[:2] if value.startswith('\\"') else value[:1] if value[:1] in "\"'" else ""
    return f"{match['key']}{quote}{FILTERED}{quote}"


def _filter_tag_maps(text: str) -> str:
    """Every `tags` map written inside `text` (JSON, a repr) as `{[Filtered]}`: the map ends at the
    brace that closes it, braces inside its quoted keys and values not counted."""
    out: list[str] = []
    position = 0
    for match in _TAGS_IN_TEXT.finditer(text):
        if match.start() < position:  # inside a map already filtered
            continue
        depth, quote, i = 1, "", match.end()
        while i < len(text) and depth:
            char = text[i]
            if char == "\\":
                i += 1
            elif quote:
                quote = "" if char == quote else quote
            elif char in "\"'":
                quote = char
            elif char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
            i += 1
        out += [text[position : match.end()], FILTERED, "}" if depth == 0 else ""]
        position = i
    return "".join(out) + text[position:]


def _secret_name(name: object) -> bool:
    """Whether `name` names a secret header: `Authorization`, `HTTP_COOKIE`, or `b'cookie'` (how
    Sentry prints the bytes names of an ASGI scope's headers in a frame's local variables)."""
    if not isinstance(name, str):
        return False
    bare = name.lower().removeprefix("b'").removesuffix("'").replace("_", "-").removeprefix("http-")
    return bare in _SECRET_NAMES


def _identity_name(name: str) -> bool:
    """Whether a field named `name` holds a person's identity: `user_id`, `userId`, `session-id`."""
    return name.lower().replace("_", "").replace("-", "") in _IDENTITY_KEYS


def _log_pending(pending: int, timeout: float) -> None:
    """At exit, instead of Sentry's plain-text line on stderr (logs are JSON)."""
    log.info("sending %d pending Sentry events (up to %.0f s)", pending, timeout)


def sentry_options(service: str, settings: CommonSettings, secrets: Iterable[str] = ()) -> dict[str, Any]:
    """The arguments of `sentry_sdk.init` for `service`; `secrets` are scrubbed besides write keys,
    webhook secrets, Authorization and Cookie headers, and the identities of the app's users."""
    scrubber = Scrubber(service, secrets)
    return {
        "dsn": settings.sentry_dsn.get_secret_value(),
        "release": settings.release or f"cosnap-metrics@{version('cosnap-metrics')}",
        "environment": settings.environment,
        "before_send": scrubber,
        # Transactions carry their request too, and are tagged with the service like errors.
        "before_send_transaction": scrubber,
        "before_breadcrumb": scrubber.breadcrumb,
        # Nothing of the app's users: no frame-local variables (they hold request bodies and
        # events), no request bodies. `send_default_pii` is left unset, which is off (no client
        # addresses, no user context); setting it is deprecated in favour of `data_collection`.
        "include_local_variables": False,
        "max_request_body_size": "never",
        # Shares of transactions traced and profiled (docs/reference.md, "Tracing"); 0 = off.
        "traces_sample_rate": settings.traces_sample_rate,
        "profiles_sample_rate": settings.profiles_sample_rate,
        "integrations": [
            StarletteIntegration(),
            FastApiIntegration(),
            AtexitIntegration(callback=_log_pending),
        ],
    }


TRACE_HEADERS = ("sentry-trace", "baggage")
RecordHeaders = Iterable[tuple[str, bytes | None]] | Mapping[str, bytes] | None


def trace_headers() -> list[tuple[str, bytes]]:
    """The current span's trace as Kafka record headers when Sentry is on and the span is a
    sampled one (the ingest's request, the worker's fold of a sampled record); else none."""
    span = sentry_sdk.get_current_span()
    if span is None or not span.sampled:
        return []
    headers = [("sentry-trace", span.to_traceparent().encode())]
    baggage = span.to_baggage()
    if baggage is not None:
        headers.append(("baggage", baggage.serialize().encode()))
    return headers


def sampled_trace(headers: RecordHeaders) -> dict[str, str] | None:
    """The trace a Kafka record carries (its `sentry-trace` and `baggage` headers) when it was
    sampled (`<trace id>-<span id>-1`), else None. Called for every record: a scan of its few
    headers."""
    found: dict[str, str] = {}
    for name, value in headers.items() if isinstance(headers, Mapping) else headers or ():
        if name in TRACE_HEADERS and value:
            found[name] = value.decode(errors="replace")
    return found if found.get("sentry-trace", "").endswith("-1") else None


@contextlib.contextmanager
def continued(trace: dict[str, str], op: str, name: str) -> Iterator[Span]:
    """A transaction of this service in the trace `trace` (from `sampled_trace`), open for the
    `with` block; spans started inside it are its children."""
    transaction = sentry_sdk.continue_trace(trace, op=op, name=name)
    with sentry_sdk.start_transaction(transaction) as started:
        yield started


def record_span(
    trace: dict[str, str], op: str, name: str, start: datetime, end: datetime, **data: Any
) -> None:
    """A transaction of this service in the trace `trace` that ran from `start` to `end` (the
    sink's insert of a batch holding a sampled record, recorded once it is done)."""
    transaction = sentry_sdk.continue_trace(trace, op=op, name=name)
    started = sentry_sdk.start_transaction(transaction, start_timestamp=start)
    for key, value in data.items():
        started.set_data(key, value)
    started.finish(end_timestamp=end)


def init_sentry(service: str, settings: CommonSettings, secrets: Iterable[str] = ()) -> None:
    """Start Sentry in this process if a DSN is configured; otherwise nothing is sent anywhere."""
    if settings.sentry_dsn.get_secret_value():
        sentry_sdk.init(**sentry_options(service, settings, secrets))
