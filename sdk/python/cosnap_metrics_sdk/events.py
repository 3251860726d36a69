"""Wire payloads of the four BusinessMetricsService calls, encoded once when tracked.

Encoding at track time (not at send time) keeps a programming mistake at its call site: a float
amount, a non-finite value or a naive timestamp raises there, in the caller's thread, instead of
poisoning a whole batch later in the background (one `NaN` makes a batch invalid JSON, and the
API refuses such a batch as a whole).
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

Unit = Literal["ms", "s", "bytes", "count", "percent"]
EventType = Literal["revenue", "conversion", "feature", "performance"]

# Urgent events are flushed at once rather than on the next interval.
CRITICAL_SEVERITY = "critical"


@dataclass(frozen=True, slots=True)
class EventContext:
    """Fields the client stamps on every event it sends."""

    source: str
    environment: str | None
    release: str | None


@dataclass(frozen=True, slots=True)
class EncodedEvent:
    """One event as compact JSON, with its idempotency key and whether it asks for a flush now."""

    event_id: str
    body: bytes
    urgent: bool


def rfc3339(ts: datetime) -> str:
    """UTC with millisecond precision (what the API keeps); raises TypeError for anything but a
    datetime, ValueError for a naive one or one that leaves the calendar in UTC."""
    if not isinstance(ts, datetime):
        raise TypeError(f"timestamp must be a datetime, not {type(ts).__name__}")
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise ValueError("timestamp must be timezone-aware, e.g. datetime.now(UTC)")
    try:
        utc = ts.astimezone(UTC)
    except OverflowError as exc:  # datetime.max at -14:00 is past year 9999 in UTC
        raise ValueError(f"timestamp {ts.isoformat()} is out of range in UTC") from exc
    return utc.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def exact_amount(amount: Decimal | str) -> str:
    """The amount as a decimal string; a float is refused because it has already lost digits."""
    if isinstance(amount, float):
        raise TypeError("amount must be a Decimal or a str, not a float (a binary float loses digits)")
    if isinstance(amount, Decimal):
        value = amount
    elif isinstance(amount, str):
        try:
            value = Decimal(amount)
        except InvalidOperation as exc:
            raise ValueError(f"amount {amount!r} is not a decimal number") from exc
    else:
        raise TypeError(f"amount must be a Decimal or a str, not {type(amount).__name__}")
    if not value.is_finite():
        raise ValueError("amount must be a finite decimal")
    _check_amount(value)
    return str(value)


MAX_AMOUNT = Decimal(1_000_000_000)  # the API's rule (docs/reference.md, `amount`)
MAX_EXPONENT = 64


def _check_amount(value: Decimal) -> None:
    """The API's rule for amounts, from the digits and the exponent before any arithmetic, so
    that `Decimal("1e999999999")` is a ValueError here rather than an event the API refuses:
    the exponent as written within ±64, at most 9 decimals once trailing zeros are dropped,
    |amount| <= 1e9."""
    sign, digits, exponent = value.as_tuple()
    if isinstance(exponent, str):  # NaN or Infinity
        raise ValueError("amount must be a finite decimal")
    if not -MAX_EXPONENT <= exponent <= MAX_EXPONENT:
        raise ValueError(f"amount {value} has an exponent out of range (at most ±{MAX_EXPONENT})")
    significant = "".join(map(str, digits)).lstrip("0")
    stripped = significant.rstrip("0")
    exponent += len(significant) - len(stripped)
    if not stripped:
        return
    if exponent < -9:
        raise ValueError(f"amount {value} has more than 9 decimal places")
    too_long = len(stripped) + exponent > 10
    if too_long or Decimal((sign, tuple(map(int, stripped)), exponent)).copy_abs() > MAX_AMOUNT:
        raise ValueError(f"amount {value} is beyond ±{MAX_AMOUNT}")


def finite_number(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError as exc:  # an int beyond a double
        raise ValueError(f"{name} is too large for a number") from exc
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite")
    return number


def _checked_tags(tags: dict[str, str] | None) -> dict[str, str]:
    if tags is None:
        return {}
    if not isinstance(tags, dict):
        raise TypeError("tags must be a dict of str to str")
    for key, value in tags.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"tags must map str to str; got {key!r}: {value!r}")
    return dict(tags)


def encode_event(
    context: EventContext,
    event_type: EventType,
    fields: dict[str, Any],
    *,
    user_id: str | None,
    anonymous_id: str | None,
    session_id: str | None,
    tags: dict[str, str] | None,
    timestamp: datetime | None,
    extra_tags: dict[str, str] | None = None,
    urgent: bool = False,
) -> EncodedEvent:
    """Build and encode one event. Raises TypeError/ValueError for invalid arguments; never blocks."""
    all_tags = _checked_tags(tags)
    if extra_tags:
        all_tags.update(extra_tags)
    event_id = uuid.uuid4().hex
    payload: dict[str, Any] = {
        "type": event_type,
        "event_id": event_id,
        "timestamp": rfc3339(timestamp if timestamp is not None else datetime.now(UTC)),
        **fields,
        "user_id": user_id,
        "anonymous_id": anonymous_id,
        "session_id": session_id,
        "source": context.source,
        "environment": context.environment,
        "release": context.release,
        "tags": all_tags or None,
    }
    wire = {key: value for key, value in payload.items() if value is not None}
    body = json.dumps(wire, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    return EncodedEvent(event_id=event_id, body=body, urgent=urgent)
