"""The event contract: what is accepted, what is refused and why."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from cosnap_metrics.demo import CosnapTraffic
from schemas.events import Event, RevenueEvent

EVENT: TypeAdapter[Any] = TypeAdapter(Event)
REVENUE = {"type": "revenue", "name": "subscription.renewal", "amount": "9.99", "currency": "USD"}


def test_amounts_are_exact_decimals() -> None:
    event = EVENT.validate_python(REVENUE | {"amount": 0.1})
    assert isinstance(event, RevenueEvent)
    assert event.amount == Decimal("0.1")
    assert EVENT.validate_python(REVENUE | {"amount": "12345678.123456789"}).amount == Decimal(
        "12345678.123456789"
    )


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"currency": "XXX1"}, "ISO 4217"),
        ({"currency": "usd"}, "ISO 4217"),
        ({"amount": "1e12"}, "within"),
        ({"amount": "0.0000000001"}, "decimal places"),
        ({"amount": "NaN"}, "finite"),
        ({"name": "has space"}, "pattern"),
        ({"tags": {f"k{i}": "v" for i in range(33)}}, "at most 32"),
        ({"surprise": 1}, "Extra inputs"),
        ({"timestamp": "2026-11-26T10:00:00"}, "timezone"),
        ({"event_id": "x" * 65}, "at most 64"),
    ],
)
def test_revenue_refusals_say_why(change: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        EVENT.validate_python(REVENUE | change)


def test_performance_values_must_be_finite() -> None:
    base = {"type": "performance", "metric": "api.latency", "unit": "ms"}
    assert EVENT.validate_python(base | {"value": 12.5}).value == 12.5
    for bad in (float("nan"), float("inf"), 1e16):
        with pytest.raises(ValidationError):
            EVENT.validate_python(base | {"value": bad})


def test_conversion_needs_an_identity() -> None:
    base = {"type": "conversion", "funnel": "onboarding", "step": "signed_up"}
    with pytest.raises(ValidationError, match="user_id or anonymous_id"):
        EVENT.validate_python(base)
    assert EVENT.validate_python(base | {"anonymous_id": "a1"}).step == "signed_up"


def test_text_is_nfc_normalised() -> None:
    event = EVENT.validate_python(REVENUE | {"user_id": "Cafe\u0301"})
    assert event.user_id == "Caf\u00e9"


def test_demo_traffic_is_valid_under_the_contract() -> None:
    traffic = CosnapTraffic()
    kinds = set()
    for _ in range(2000):
        kinds.add(EVENT.validate_python(traffic.event()).type)
    assert kinds == {"revenue", "conversion", "feature", "performance"}
