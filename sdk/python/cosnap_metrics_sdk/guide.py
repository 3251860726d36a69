"""The monitoring guide's `BusinessMetricsService` calls over `MetricsClient`'s four, and the
Sentry breadcrumb of each tracked event.

`client.business_metrics.track_revenue_event("subscription", "9.99")` is
`client.track_revenue("subscription", "9.99", "USD", tags=...)`: the guide's `metadata` becomes
tags the API keeps (str, int, float and bool values of at most 200 characters under keys
`^[A-Za-z0-9_.:-]{1,64}$`, the first 32; the rest is left out), `metadata["severity"] ==
"critical"` sends the event at once, as revenue always is.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, Protocol

from cosnap_metrics_sdk.events import (
    CRITICAL_SEVERITY,
    EncodedEvent,
    EventContext,
    EventType,
    encode_event,
    exact_amount,
    finite_number,
)

MAX_TAGS = 32  # the API's tag limits (docs/reference.md, "Events")
MAX_TAG_VALUE_CHARS = 200
_TAG_KEY = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
MAX_UNIT_CHARS = 32
DEFAULT_FUNNEL = "default"  # a guide conversion's funnel, unless metadata["funnel"] names one


class Breadcrumbs(Protocol):
    """What takes a breadcrumb: the `sentry_sdk` module, or anything with its `add_breadcrumb`."""

    def add_breadcrumb(self, crumb: dict[str, Any]) -> None: ...


def initialised_sentry() -> Breadcrumbs | None:
    """`sentry_sdk` when it is installed and initialised in this process, else None."""
    try:
        import sentry_sdk
    except ImportError:
        return None
    return sentry_sdk if sentry_sdk.is_initialized() else None


def guide_tags(metadata: Mapping[str, Any] | None) -> dict[str, str]:
    """The guide's `metadata` as tags the API keeps; anything else is left out."""
    tags: dict[str, str] = {}
    for key, value in (metadata or {}).items():
        if len(tags) == MAX_TAGS:
            break
        if not (isinstance(key, str) and _TAG_KEY.fullmatch(key)):
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str | int | float | Decimal):
            text = str(value)
        else:
            continue
        if len(text) <= MAX_TAG_VALUE_CHARS:
            tags[key] = text
    return tags


def _critical(metadata: Mapping[str, Any] | None) -> bool:
    return (metadata or {}).get("severity") == CRITICAL_SEVERITY


class BusinessMetrics:
    """The guide's four calls; each returns the event's `event_id` and never blocks on the
    network. They raise TypeError/ValueError as the calls they stand for."""

    def __init__(self, context: EventContext, track: Callable[[EncodedEvent], str]) -> None:
        self._context = context
        self._track = track

    def track_revenue_event(
        self,
        event_type: str,
        amount: Decimal | str,
        currency: str = "USD",
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """A revenue event named `event_type`; sent at once."""
        fields = {"name": event_type, "amount": exact_amount(amount), "currency": currency}
        return self._event("revenue", fields, None, metadata, urgent=True)

    def track_conversion_step(
        self, step: str, user_id: str, metadata: Mapping[str, Any] | None = None
    ) -> str:
        """A funnel step of `metadata["funnel"]`, else of the funnel "default"."""
        rest = dict(metadata or {})
        funnel = rest.pop("funnel", None)
        if not isinstance(funnel, str):
            funnel, rest = DEFAULT_FUNNEL, dict(metadata or {})
        return self._event("conversion", {"funnel": funnel, "step": step}, user_id, rest)

    def track_feature_usage(
        self, feature: str, action: str, user_id: str | None = None, metadata: Mapping[str, Any] | None = None
    ) -> str:
        """The use of a feature."""
        return self._event("feature", {"feature": feature, "action": action}, user_id, metadata)

    def track_performance_metric(
        self, metric_name: str, value: float, unit: str = "ms", metadata: Mapping[str, Any] | None = None
    ) -> str:
        """A measurement in `unit`: ms, s, bytes, count, percent or another unit of 1-32 characters."""
        if not isinstance(unit, str) or not 0 < len(unit.strip()) <= MAX_UNIT_CHARS:
            raise ValueError(f"unit must be a string of 1-{MAX_UNIT_CHARS} characters, e.g. 'ms'")
        fields = {"metric": metric_name, "value": finite_number(value, "value"), "unit": unit}
        return self._event("performance", fields, None, metadata)

    def _event(
        self,
        event_type: EventType,
        fields: dict[str, Any],
        user_id: str | None,
        metadata: Mapping[str, Any] | None,
        *,
        urgent: bool = False,
    ) -> str:
        event = encode_event(
            self._context,
            event_type,
            fields,
            user_id=user_id,
            anonymous_id=None,
            session_id=None,
            tags=guide_tags(metadata),
            timestamp=None,
            urgent=urgent or _critical(metadata),
        )
        return self._track(event)
