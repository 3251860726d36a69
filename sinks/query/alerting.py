"""Alerting measured, on `/metrics`: the numbers of the alerting panel (`ALERTING_SQL` of
`sinks/query/panels.py`) over the last `COSNAP_ALERTING_DAYS` days, as gauges labelled by rule
(`(all)` for every rule together), with the targets they are held to.

The sink's process reads them from ClickHouse every `COSNAP_ALERTING_REFRESH_S`, through a
`Reader` (read-only sessions, the read limits), on a thread of its own; `cosnap-metrics alerts
report` and the dashboards run the same query, so all three show the same numbers
(docs/reference.md, "Alerting measured").
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import Gauge

from sinks.query.panels import ALERTING_SQL, expand_macros
from sinks.query.reader import QueryResult, Reader

log = logging.getLogger("cosnap.sink.alerting")

FIRED = Gauge("cosnap_alerting_alerts_fired", "Alert episodes that started in the period, by rule", ["rule"])
PER_DAY = Gauge("cosnap_alerting_alerts_per_day", "Alert episodes per day over the period, by rule", ["rule"])
DELIVERIES = Gauge(
    "cosnap_alerting_deliveries",
    "Alert state changes a target took (delivered) or not after its tries (failed) in the period",
    ["rule", "outcome"],
)
DELIVERY_RATIO = Gauge(
    "cosnap_alerting_delivery_ratio", "delivered / (delivered + failed) in the period, by rule", ["rule"]
)
DETECT_SECONDS = Gauge(
    "cosnap_alerting_detect_seconds",
    "Mean time to detect: emitted_at - evaluated_at of the firing record, by rule",
    ["rule"],
)
RESOLVED = Gauge("cosnap_alerting_alerts_resolved", "Episodes of the period that resolved, by rule", ["rule"])
RESOLVE_SECONDS = Gauge(
    "cosnap_alerting_resolve_seconds", "Mean time to resolve (MTTR): ends_at - starts_at, by rule", ["rule"]
)
FLAPPING = Gauge(
    "cosnap_alerting_flapping_alerts",
    "Episodes that fired again within the flapping interval of their alert's last resolve, by rule",
    ["rule"],
)
NOISE = Gauge("cosnap_alerting_noise_alerts", "Episodes acknowledged as noise, by rule", ["rule"])
NOISE_RATIO = Gauge("cosnap_alerting_noise_ratio", "Acknowledged as noise / fired, by rule", ["rule"])
TARGET = Gauge(
    "cosnap_alerting_target",
    "The target each measure is held to: alerts_per_day and resolve_seconds below it, delivery_ratio "
    "above it, noise_ratio below it",
    ["measure"],
)
PERIOD = Gauge("cosnap_alerting_period_seconds", "How far back the cosnap_alerting_* gauges look")

_BY_RULE: dict[str, Gauge] = {
    "fired": FIRED,
    "alerts_per_day": PER_DAY,
    "detect_s": DETECT_SECONDS,
    "resolved": RESOLVED,
    "mttr_s": RESOLVE_SECONDS,
    "flapping": FLAPPING,
    "noise": NOISE,
}
_PERCENTS: dict[str, Gauge] = {"delivery_pct": DELIVERY_RATIO, "noise_pct": NOISE_RATIO}
# The target columns of the query: (the gauge's measure, the factor from the column's unit).
_TARGETS = {
    "alerts_per_day_target": ("alerts_per_day", 1.0),
    "delivery_pct_target": ("delivery_ratio", 0.01),
    "mttr_s_target": ("resolve_seconds", 1.0),
    "noise_pct_target": ("noise_ratio", 0.01),
}


def alerting_sql(days: int, now: datetime) -> str:
    """The alerting query over the `days` days before `now`."""
    return expand_macros(ALERTING_SQL, now - timedelta(days=days), now)


def publish(result: QueryResult, days: int) -> None:
    """Set the gauges to the rows of the alerting query; a rule without a row, or a measure
    without a value (no delivery, no resolved episode), has no sample."""
    for gauge in (*_BY_RULE.values(), *_PERCENTS.values(), DELIVERIES):
        gauge.clear()
    PERIOD.set(days * 86400)
    for row in result.rows:
        values: dict[str, Any] = dict(zip(result.columns, row, strict=True))
        rule = values["rule"]
        for column, gauge in _BY_RULE.items():
            if values[column] is not None:
                gauge.labels(rule).set(values[column])
        for column, gauge in _PERCENTS.items():
            if values[column] is not None:
                gauge.labels(rule).set(values[column] / 100)
        for outcome in ("delivered", "failed"):
            DELIVERIES.labels(rule, outcome).set(values[outcome])
        for column, (measure, factor) in _TARGETS.items():
            TARGET.labels(measure).set(values[column] * factor)


@dataclass
class AlertingStats:
    """The thread that keeps the gauges current; `stop()` ends it."""

    reader: Reader
    days: int
    refresh_s: float
    stopping: threading.Event

    def refresh(self) -> None:
        try:
            result = self.reader.run(alerting_sql(self.days, datetime.now(UTC)))
        except Exception as exc:  # the store busy or down: the gauges keep their last values
            log.warning("alerting measures not refreshed: %s", exc)
            return
        publish(result, self.days)

    def run(self) -> None:
        while True:
            self.refresh()
            if self.stopping.wait(self.refresh_s):
                return

    def stop(self) -> None:
        self.stopping.set()


def start_alerting_stats(reader: Reader, days: int, refresh_s: float) -> AlertingStats:
    """Compute the gauges now and every `refresh_s` seconds, on a daemon thread, until `stop()`."""
    stats = AlertingStats(reader, days, refresh_s, threading.Event())
    threading.Thread(target=stats.run, name="alerting-stats", daemon=True).start()
    return stats
