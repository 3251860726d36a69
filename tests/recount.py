"""The 1-minute windows of `metrics.windows` against a recount of `metrics.events FINAL`, per
project, type, series, currency and minute (adding up across dimensions): what the exactness
and fault tests compare to show that no event is missing from the windows or counted twice."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal
from typing import Any

from tests.conftest import Pipeline

# An event's series and the value its windows add up, from its columns in metrics.events, and
# its minute as the windows' start is formatted: the pieces of every recount.
SERIES = """multiIf(type = 'revenue', name, type = 'performance', metric, type = 'feature', feature,
                concat(funnel, ':', step))"""
VALUE = """multiIf(type = 'revenue', toDecimal128(amount, 9),
                type = 'performance', toDecimal128(toString(value), 9), toDecimal128(1, 9))"""
MINUTE = "formatDateTime(toStartOfMinute(timestamp), '%Y-%m-%dT%H:%i:%S')"
# The default dimension of performance (unit) and feature (action) series, in events and windows.
DIMENSION = "multiIf(type = 'performance', unit, type = 'feature', action, '')"
WINDOW_DIMENSION = "multiIf(type = 'performance', dims['unit'], type = 'feature', dims['action'], '')"

WINDOWS = """
SELECT project, type, name, currency, formatDateTime(window_start, '%Y-%m-%dT%H:%i:%S'), count,
       toString(sum)
FROM metrics.windows WHERE granularity = '1m'"""
RECOUNT = f"""
SELECT project, type, {SERIES} AS series, currency, {MINUTE} AS minute, count(), toString(sum({VALUE}))
FROM metrics.events FINAL GROUP BY project, type, series, currency, minute"""  # noqa: S608 - constants


def summed(rows: list[list[Any]]) -> dict[tuple[str, ...], tuple[int, Decimal]]:
    """(project, type, series, currency, minute) -> (count, sum), adding up across dimensions."""
    totals: dict[tuple[str, ...], list[Any]] = defaultdict(lambda: [0, Decimal(0)])
    for row in rows:
        acc = totals[tuple(str(c) for c in row[:5])]
        acc[0] += int(str(row[5]))
        acc[1] += Decimal(str(row[6]))
    return {k: (v[0], v[1]) for k, v in totals.items()}


def windows_and_recount(
    pipeline: Pipeline,
) -> tuple[dict[tuple[str, ...], tuple[int, Decimal]], dict[tuple[str, ...], tuple[int, Decimal]]]:
    """The 1-minute windows and the recount, each as `summed` gives them: equal when exact."""
    return summed(pipeline.query(WINDOWS)), summed(pipeline.query(RECOUNT))
