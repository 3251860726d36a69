"""`cosnap-metrics alerts report [--days N]`: how alerting itself did, per rule and for all rules,
each figure beside its target (docs/reference.md, "Alerting measured").

It runs the alerting panel's query (`sinks/query/panels.py`, the one the dashboards and the
sink's `/metrics` run) the way `cosnap-metrics query` runs any read, so it works against a
running deployment.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from cosnap_metrics.query import run_query
from schemas.settings import CommonSettings
from sinks.query.alerting import alerting_sql
from sinks.query.reader import QueryResult

MISSED = "!"  # marks a figure outside its target


def alerting_report(settings: CommonSettings, days: int, now: datetime) -> QueryResult:
    """The alerting rows over the `days` days before `now`; raises QueryError."""
    return run_query(settings, alerting_sql(days, now))


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def _cells(row: dict[str, Any]) -> list[str]:
    """The figures of one row, each marked when it is outside its target."""

    def mark(text: str, missed: bool) -> str:
        return f"{text} {MISSED}" if missed else text

    delivery, mttr, noise = row["delivery_pct"], row["mttr_s"], row["noise_pct"]
    return [
        row["rule"],
        str(row["fired"]),
        mark(f"{row['alerts_per_day']:.2f}", row["alerts_per_day"] >= row["alerts_per_day_target"]),
        "-"
        if delivery is None
        else mark(
            f"{delivery:.2f} % ({row['delivered']}/{row['delivered'] + row['failed']})",
            delivery <= row["delivery_pct_target"],
        ),
        "-" if row["detect_s"] is None else _seconds(row["detect_s"]),
        "-" if mttr is None else mark(f"{_seconds(mttr)} ({row['resolved']})", mttr >= row["mttr_s_target"]),
        str(row["flapping"]),
        "-" if noise is None else mark(f"{noise:.2f} % ({row['noise']})", noise >= row["noise_pct_target"]),
    ]


def format_report(result: QueryResult, days: int, now: datetime) -> str:
    """The table: one line per rule, then `(all)`; the header names each target."""
    rows = [dict(zip(result.columns, row, strict=True)) for row in result.rows]
    title = f"alerting over the {days} days to {now:%Y-%m-%d %H:%M} UTC ({MISSED} = outside its target)"
    if not rows:
        return f"{title}\nno alerts, deliveries or acknowledgements in the period"
    targets = rows[0]
    header = [
        "rule",
        "fired",
        f"alerts/day (< {targets['alerts_per_day_target']:g})",
        f"delivery (> {targets['delivery_pct_target']:g} %)",
        "detect (mean)",
        f"MTTR (< {_seconds(targets['mttr_s_target'])})",
        "flapping",
        f"noise (< {targets['noise_pct_target']:g} %)",
    ]
    table = [header, *(_cells(row) for row in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        )
        for line in table
    ]
    return "\n".join([title, *lines])
