"""The panels people look at: one named query each, shared by every dashboard.

The embedded dashboard (`sinks/query/dashboard.py`) and the Grafana dashboard generated into
`sinks/query/grafana/dashboards/executive.json` both take their SQL from `PANELS`, so the two can
never show different numbers. The SQL is written in the dialect of Grafana's ClickHouse plugin
(`grafana-clickhouse-datasource`): its `$__timeFilter(column)` macro stands for the dashboard's
time range (`$__fromTime` and `$__toTime` for its ends), and `expand_macros` replaces them the way
the plugin does, for the embedded page and for the tests that run every Grafana panel against chDB.

Panels read `metrics.events` (fresh within a second of the 202, exact decimals, one row per
`event_id` with FINAL) rather than the final windows of `metrics.windows`, which appear only
after a window's grace; `metrics.alerts`, whose newest state per fingerprint says whether an alert
fires now; `metrics.alert_deliveries` and `metrics.alert_acks`, what became of the alerts; and
`metrics.late_events`, one row per event that arrived after its window had closed.

Every panel leaves out what `cosnap-metrics validate` sends: events tagged `synthetic: "true"`,
alerts labelled so, and the deliveries and acknowledgements of its rule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from schemas.settings import VALIDATE_RULE
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


# An alert of the same fingerprint firing again within this many minutes of resolving is flapping.
FLAP_MINUTES = 10
ALL_RULES = "(all)"  # the row of every rule together; rule names are [a-z][a-z0-9_]*

# Episodes by starts_at, deliveries by when their outcome was known, acknowledgements by the
# episode's starts_at; one row per thing counted (`kind`), then counted per rule and for all.
# Only this module's constants are spliced in (S608).
ALERTING_SQL = f"""
SELECT if(grouping(alert_rule) = 1, '{ALL_RULES}', alert_rule) AS rule,
       countIf(kind = 'fired') AS fired,
       round(fired * 86400 / dateDiff('second', $__fromTime, $__toTime), 2) AS alerts_per_day,
       10 AS alerts_per_day_target,
       countIf(kind = 'delivery' AND flag = 1) AS delivered,
       countIf(kind = 'delivery' AND flag = 0) AS failed,
       if(delivered + failed = 0, NULL, round(100 * delivered / (delivered + failed), 2)) AS delivery_pct,
       99.9 AS delivery_pct_target,
       round(avgIf(seconds, kind = 'fired'), 3) AS detect_s,
       countIf(kind = 'resolved') AS resolved,
       round(avgIf(seconds, kind = 'resolved'), 1) AS mttr_s,
       300 AS mttr_s_target,
       countIf(kind = 'fired' AND flag = 1) AS flapping,
       countIf(kind = 'noise') AS noise,
       if(fired = 0, NULL, round(100 * noise / fired, 2)) AS noise_pct,
       2 AS noise_pct_target
FROM
(
    SELECT rule AS alert_rule, 'fired' AS kind,
           greatest(0, dateDiff('millisecond', evaluated_at, emitted_at) / 1000) AS seconds,
           toUInt8(ifNull(dateDiff('second', previous_end, starts_at) <= {FLAP_MINUTES * 60}, 0)) AS flag
    FROM
    (
        SELECT rule, state, starts_at, evaluated_at, emitted_at,
               lagInFrame(ends_at) OVER (PARTITION BY fingerprint ORDER BY starts_at, state
                                         ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS previous_end
        FROM metrics.alerts FINAL
        WHERE labels['synthetic'] != 'true'
    )
    WHERE state = 'firing' AND $__timeFilter(starts_at)
    UNION ALL
    SELECT rule, 'resolved', dateDiff('millisecond', starts_at, ends_at) / 1000, 0
    FROM metrics.alerts FINAL
    WHERE state = 'resolved' AND labels['synthetic'] != 'true' AND $__timeFilter(starts_at)
    UNION ALL
    SELECT rule, 'delivery', seconds, toUInt8(outcome = 'delivered')
    FROM metrics.alert_deliveries FINAL
    WHERE rule != '{VALIDATE_RULE}' AND $__timeFilter(finished_at)
    UNION ALL
    SELECT rule, 'noise', 0, 1
    FROM metrics.alert_acks FINAL
    WHERE noise AND rule != '{VALIDATE_RULE}' AND $__timeFilter(starts_at)
)
GROUP BY ROLLUP(alert_rule)
ORDER BY grouping(alert_rule), alert_rule"""  # noqa: S608

PANELS: tuple[Panel, ...] = (
    Panel(
        key="revenue_by_currency",
        title="Revenue by currency",
        description="Sum of revenue events in the time range, per currency (exact decimals).",
        sql="""
SELECT currency, sum(amount) AS revenue, count() AS payments,
       uniqExact(if(user_id != '', user_id, anonymous_id)) AS payers
FROM metrics.events FINAL
WHERE type = 'revenue' AND tags['synthetic'] != 'true' AND $__timeFilter(timestamp)
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
WHERE type = 'revenue' AND tags['synthetic'] != 'true' AND $__timeFilter(timestamp)
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
    WHERE type = 'conversion' AND tags['synthetic'] != 'true' AND $__timeFilter(timestamp)
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
WHERE type = 'feature' AND tags['synthetic'] != 'true' AND $__timeFilter(timestamp)
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
WHERE type = 'performance' AND tags['synthetic'] != 'true' AND $__timeFilter(timestamp)
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
    WHERE labels['synthetic'] != 'true'
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
    Panel(
        key="alerting",
        title="Alerting measured",
        description=(
            "How alerting itself did in the time range, per rule and for all rules ('(all)'), each "
            "beside its target: alerts fired and per day (target < 10), delivery % = delivered / "
            "(delivered + failed) of every state change at every target (> 99.9 %), mean time to "
            "detect (emitted_at - evaluated_at of the firing record), MTTR = mean of ends_at - "
            "starts_at of resolved episodes (< 5 min), flapping (fired again within "
            f"{FLAP_MINUTES} min of resolving), noise % = acknowledged as noise / fired (< 2 %)."
        ),
        sql=ALERTING_SQL,
        grafana="table",
        width=24,
        height=8,
    ),
)


def expand_macros(sql: str, start: datetime, end: datetime) -> str:
    """`sql` with the Grafana ClickHouse plugin's macros `$__timeFilter(column)`, `$__fromTime` and
    `$__toTime` replaced for the range [start, end], as the plugin's backend does (whole Unix
    seconds); raises UnknownMacro for any other macro."""

    def replace(match: re.Match[str]) -> str:
        name, argument = match.group(1), match.group(2)
        if name == "timeFilter" and argument and argument.strip():
            column = argument.strip()
            return (
                f"{column} >= toDateTime({int(start.timestamp())}) "
                f"AND {column} <= toDateTime({int(end.timestamp())})"
            )
        if name in ("fromTime", "toTime") and argument is None:
            return f"toDateTime({int((start if name == 'fromTime' else end).timestamp())})"
        raise UnknownMacro(f"macro {match.group(0)} is not supported by the embedded dashboard")

    return _MACRO.sub(replace, sql)
