"""Tumbling windows and the watermark, driven without Kafka."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from streams.watermark import Watermark
from streams.windows import TumblingWindows, series_id

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def envelope(*events: dict[str, Any], project: str = "p") -> dict[str, Any]:
    return {"project": project, "request_id": "r", "received_at": T0.isoformat(), "events": list(events)}


def revenue(seconds: float, amount: str, currency: str = "USD") -> dict[str, Any]:
    ts = (T0 + timedelta(seconds=seconds)).isoformat()
    return {"type": "revenue", "name": "sub", "amount": amount, "currency": currency, "timestamp": ts}


def latency(seconds: float, value: float) -> dict[str, Any]:
    ts = (T0 + timedelta(seconds=seconds)).isoformat()
    return {"type": "performance", "metric": "api.latency", "value": value, "unit": "ms", "timestamp": ts}


def windows(lateness: float = 0, grace: float = 0, idle: float = 5) -> TumblingWindows:
    return TumblingWindows("1m", Watermark(lateness_s=lateness, idle_s=idle), grace_s=grace)


def test_window_closes_once_when_the_watermark_passes_its_end() -> None:
    w = windows()
    now = T0.timestamp()
    w.add_envelope(0, envelope(revenue(1, "9.99"), revenue(30, "0.01"), latency(59, 100.5)), now)
    assert w.close_ready(now) == []
    w.add_envelope(0, envelope(revenue(61, "5")), now)
    closed = w.close_ready(now)
    by_type = {c["type"]: c for c in closed}
    assert set(by_type) == {"revenue", "performance"}
    assert (by_type["revenue"]["count"], Decimal(by_type["revenue"]["sum"])) == (2, Decimal("10.00"))
    assert (by_type["revenue"]["min"], by_type["revenue"]["max"]) == ("0.01", "9.99")
    assert by_type["performance"]["dims"] == {"unit": "ms"}
    assert by_type["revenue"]["window_start"] == "2026-11-26T12:00:00Z"
    assert w.close_ready(now) == []  # emitted once
    assert w.open_windows == 1


def test_revenue_sums_are_exact_per_currency() -> None:
    w = windows()
    w.add_envelope(0, envelope(*(revenue(i % 50, "0.10") for i in range(1000)), revenue(5, "100", "JPY")), 0)
    w.add_envelope(0, envelope(revenue(120, "1")), 0)
    closed = {c["currency"]: c for c in w.close_ready(0)}
    assert Decimal(closed["USD"]["sum"]) == Decimal("100.00")
    assert closed["JPY"]["count"] == 1
    assert closed["USD"]["series_id"] != closed["JPY"]["series_id"]


def test_grace_keeps_a_window_open_for_late_events_then_routes_later_ones() -> None:
    w = windows(lateness=0, grace=10)
    w.add_envelope(0, envelope(revenue(10, "1")), 0)
    w.add_envelope(0, envelope(revenue(65, "1")), 0)  # watermark 65 < 60 + 10: still open
    assert w.add_envelope(0, envelope(revenue(20, "2")), 0) == []
    assert w.close_ready(0) == []
    w.add_envelope(0, envelope(revenue(71, "1")), 0)  # watermark 71 >= 70: closes
    [closed] = [c for c in w.close_ready(0) if c["window_start"].endswith("12:00:00Z")]
    assert (closed["count"], closed["sum"]) == (2, "3")
    late = w.add_envelope(0, envelope(revenue(30, "7")), 0)
    assert [e["amount"] for e in late] == ["7"]
    assert w.late_events == 1


def test_lateness_delays_the_watermark() -> None:
    wm = Watermark(lateness_s=5, idle_s=100)
    wm.observe(0, 1000.0, now=0)
    assert wm.advance(now=0) == 995.0


def test_watermark_is_the_slowest_partition_and_never_goes_back() -> None:
    wm = Watermark(lateness_s=0, idle_s=100)
    wm.observe(0, 100.0, now=0)
    wm.observe(1, 50.0, now=0)
    assert wm.advance(now=0) == 50.0
    wm.observe(1, 80.0, now=1)
    assert wm.advance(now=1) == 80.0
    wm.forget(1)
    assert wm.advance(now=1) == 100.0
    wm.observe(2, 10.0, now=1)  # a partition far behind does not move it back
    assert wm.advance(now=1) == 100.0


def test_idle_partition_follows_the_wall_clock() -> None:
    wm = Watermark(lateness_s=0, idle_s=5)
    wm.observe(0, 100.0, now=1000.0)
    assert wm.advance(now=1004.0) == 100.0  # not idle yet
    assert wm.advance(now=1010.0) == 110.0  # idle: event time moves on with wall time


def test_quiet_stream_closes_its_last_window_by_idleness() -> None:
    w = windows(idle=2)
    w.add_envelope(0, envelope(revenue(58, "1")), now=5000.0)
    assert w.close_ready(5001.0) == []
    assert len(w.close_ready(5003.0)) == 1


def test_series_id_is_stable_and_distinguishes_dims() -> None:
    a = series_id(("p", "feature", "share", "", (("action", "clicked"),)))
    b = series_id(("p", "feature", "share", "", (("action", "opened"),)))
    assert a == series_id(("p", "feature", "share", "", (("action", "clicked"),)))
    assert a != b and len(a) == 24
