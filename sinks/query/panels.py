"""The panels people look at: one named query each, shared by every dashboard.

The embedded dashboard (`sinks/query/dashboard.py`) and the Grafana dashboard generated into
`sinks/query/grafana/dashboards/executive.json` both take their SQL from `PANELS`, so the two can
never show different numbers. The SQL is written in the dialect of Grafana's ClickHouse plugin
(`grafana-clickhouse-datasource`): its `$__timeFilter(column)` macro stands for the dashboard's
time range, and `expand_macros` replaces it the way the plugin does, for the embedded page and
for the tests that run every Grafana panel against chDB.

Panels read `metrics.events` (fresh within a second of the 202, exact decimals, one row per
`event_id` with FINAL) rather than the final windows of `metrics.windows`, which appear only
after a window's grace; `metrics.alerts`, whose newest state per fingerprint says whether an alert
fires now; and `metrics.late_events`, one row per event that arrived after its window had closed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sinks.query.errors import UnknownMacro

GrafanaPanel = Literal["stat", "timeseries", "table"]

_MACRO = re.compile(r"\$__(\w+)(?:\(([^)]*)\))?")


@dataclass(frozen=True, slots=True)
class Panel:
    """One dashboard panel: `key` names it in the embedded page's JSON and its test ids."""

    key: str
    title: str
    description: str
    sql: str
    grafana: GrafanaPanel
    width: int  # of Grafana's 24 grid columns
    height: int


PANELS: tuple[Panel, ...] = (
    Panel(
        key="revenue_by_currency",
        title="Revenue by currency",
        description="Sum of revenue events in the time range, per currency (exact decimals).",
        sql="""
SELECT currency, sum(amount) AS revenue, count() AS payments,
       uniqExact(if(user_id != '', user_id, anonymous_id)) AS payers
FROM metrics.events FINAL
WHERE type = 'revenue' AND $__timeFilter(timestamp)
GROUP BY currency
ORDER BY currency""",
        grafana="stat",
        width=24,
        height=5,
    ),
    Panel(
        key="revenue_per_minute",
        title="Revenue per minute",
        description="Revenue per event-time minute, one series per currency.",
        sql="""
SELECT toStartOfMinute(timestamp) AS minute, currency, sum(amount) AS revenue
FROM metrics.events FINAL
WHERE type = 'revenue' AND $__timeFilter(timestamp)
GROUP BY minute, currency
ORDER BY minute, currency""",
        grafana="timeseries",
        width=24,
        height=8,
    ),
    Panel(
        key="funnels",
        title="Funnels",
        description=(
            "Distinct users who reached each step, in step_index order; conversion is relative to the "
            "funnel's first step, step conversion to the step before."
        ),
        sql="""
SELECT funnel, step, step_index, users,
       round(users / first_value(users) OVER funnel_steps, 4) AS conversion,
       round(users / lagInFrame(users, 1, users) OVER funnel_steps, 4) AS step_conversion
FROM
(
    SELECT funnel, step, min(step_index) AS step_index,
           uniqExact(if(user_id != '', user_id, anonymous_id)) AS users
    FROM metrics.events FINAL
    WHERE type = 'conversion' AND $__timeFilter(timestamp)
    GROUP BY funnel, step
)
WINDOW funnel_steps AS (
    PARTITION BY funnel ORDER BY step_index ASC NULLS LAST, users DESC, step ASC
    ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING
)
ORDER BY funnel, step_index ASC NULLS LAST, users DESC, step ASC""",
        grafana="table",
        width=12,
        height=10,
    ),
    Panel(
        key="top_features",
        title="Top features",
        description="The ten most used feature actions, with the distinct users who used them.",
        sql="""
SELECT feature, action, count() AS uses, uniqExact(if(user_id != '', user_id, anonymous_id)) AS users
FROM metrics.events FINAL
WHERE type = 'feature' AND $__timeFilter(timestamp)
GROUP BY feature, action
ORDER BY uses DESC, feature, action
LIMIT 10""",
        grafana="table",
        width=12,
        height=10,
    ),
    Panel(
        key="latency_p95",
        title="p95 latency per metric",
        description=(
            "Exact 95th percentile (the value at rank floor(0.95 n) of the sorted samples) of "
            "performance events in the time range."
        ),
        sql="""
SELECT metric, unit, count() AS samples, quantileExact(0.95)(value) AS p95, max(value) AS max
FROM metrics.events FINAL
WHERE type = 'performance' AND $__timeFilter(timestamp)
GROUP BY metric, unit
ORDER BY metric, unit""",
        grafana="table",
        width=12,
        height=8,
    ),
    Panel(
        key="alerts_firing",
        title="Alerts firing",
        description=(
            "Alerts whose newest state change is 'firing', whatever the time range: an alert fires "
            "until its 'resolved' record arrives."
        ),
        sql="""
SELECT fingerprint, rule, severity, project, annotations['summary'] AS summary, value, threshold,
       starts_at, labels
FROM
(
    SELECT * FROM metrics.alerts FINAL
    ORDER BY evaluated_at DESC, state DESC
    LIMIT 1 BY fingerprint
)
WHERE state = 'firing'
ORDER BY severity = 'critical' DESC, starts_at DESC, rule, fingerprint""",
        grafana="table",
        width=12,
        height=8,
    ),
    Panel(
        key="late_events",
        title="Late events per project",
        description=(
            "Events the streams worker read after their 10-second window had closed, in the time range "
            "of when it read them: how many, how many corrections added to the windows (the others "
            "were copies of events counted before), and how late (delay = read time - event time; "
            "p50 is the value at rank floor(0.5 n) of the sorted delays)."
        ),
        sql="""
SELECT project, count() AS late_events, countIf(counted = 1) AS counted_events,
       round(counted_events / late_events, 4) AS counted_share,
       quantileExact(0.5)(delay_s) AS p50_delay_s, max(delay_s) AS max_delay_s
FROM metrics.late_events FINAL
WHERE $__timeFilter(folded_at)
GROUP BY project
ORDER BY late_events DESC, project""",
        grafana="table",
        width=12,
        height=8,
    ),
)


def expand_macros(sql: str, start: datetime, end: datetime) -> str:
    """`sql` with the Grafana ClickHouse plugin's macros replaced for the range [start, end], as
    the plugin's backend does (whole Unix seconds); raises UnknownMacro for any other macro."""

    def replace(match: re.Match[str]) -> str:
        name, argument = match.group(1), match.group(2)
        if name == "timeFilter" and argument and argument.strip():
            column = argument.strip()
            return (
                f"{column} >= toDateTime({int(start.timestamp())}) "
                f"AND {column} <= toDateTime({int(end.timestamp())})"
            )
        raise UnknownMacro(f"macro {match.group(0)} is not supported by the embedded dashboard")

    return _MACRO.sub(replace, sql)
