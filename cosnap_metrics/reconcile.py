"""`cosnap-metrics reconcile`: every window of `metrics.windows` against a recount of
`metrics.events FINAL`.

Per (project, type, series name, currency, granularity, window start) the windows are summed over
their dims and series (`count`, `sum`; `min` of `min`, `max` of `max`) and compared with a GROUP BY
over the events, which keep the first copy of each event: count, min and max must be equal, and so
must the sum, as a decimal. The events add what the streams worker adds: a revenue amount, a
performance value as the decimal of its shortest round-trip form, 1 for a feature or conversion
event. The store keeps nine decimals and cuts each part of a window there, so a performance sum
may differ from the exact one by less than 1e-9 per part of the window (zero unless a value has
more than nine decimals); every other sum is compared exactly.

A window is compared once it is final. The worker emits a window when the watermark of its events
partition passes its end plus the grace; that clock is estimated from the store: the newest event
time of the partition, moved on with the wall clock once the partition has been idle (as
streams/watermark.py does). A window is open, and skipped, while its end + grace + lateness +
`settle_s` is after that estimate (or after now), or while one of its events was received less
than `settle_s` ago (a late event becomes a correction a few seconds after its 202). Run right
after traffic, `reconcile` therefore leaves out only the windows the worker may not have written
yet, and says how many.

Where the worker counted a window's events under the `__overflow__` name or currency (the caps of
schemas/series.py), the series it took them from cannot be told from the events; that window is
compared over all its names, with the name and currency shown as `*`.

The SQL goes through `cosnap_metrics.query.run_query`, so it runs wherever `cosnap-metrics query`
does: through the running sink's query service with embedded chDB, else against the store itself.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TextIO

from schemas.records import GRANULARITY_SECONDS, Granularity
from schemas.series import OVERFLOW, overflow_name
from schemas.settings import StreamsSettings
from sinks.query.app import QueryResult

Runner = Callable[[str], QueryResult]

SETTLE_S = 15.0  # how long after its 202 an event may take to reach its window in the store
MAX_LISTED = 1000  # mismatches returned in full; the rest are only counted
ALL = "*"  # the name and currency of a window compared over all its names (an overflow series)
_HEADER = (
    "window (UTC)", "gran", "project", "type", "name", "currency", "differs", "expected", "found",
)  # fmt: skip
_AGO = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True, slots=True)
class Totals:
    """What a window holds, summed over its series and parts (or recounted from the events)."""

    count: int
    sum: Decimal
    min: Decimal
    max: Decimal

    def __str__(self) -> str:
        return (
            f"count {self.count} · sum {_plain(self.sum)} · min {_plain(self.min)} · max {_plain(self.max)}"
        )


@dataclass(frozen=True, slots=True)
class Mismatch:
    """One window whose numbers differ from the events'. `expected` is None when no event falls
    in it (a window that should not exist), `found` when `metrics.windows` lacks it."""

    project: str
    type: str
    name: str
    currency: str
    granularity: Granularity
    window_start: datetime
    expected: Totals | None
    found: Totals | None
    parts: int  # rows of metrics.aggregates merged into the window (on-time row and corrections)

    @property
    def window_end(self) -> datetime:
        return datetime.fromtimestamp(
            self.window_start.timestamp() + GRANULARITY_SECONDS[self.granularity], UTC
        )

    @property
    def differs(self) -> list[str]:
        """Which numbers differ: `window` when one side is missing, else count, sum, min, max."""
        if self.expected is None or self.found is None:
            return ["window"]
        pairs = {
            "count": (self.expected.count, self.found.count),
            "sum": (self.expected.sum, self.found.sum),
            "min": (self.expected.min, self.found.min),
            "max": (self.expected.max, self.found.max),
        }
        return [field for field, (want, got) in pairs.items() if want != got]


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """The outcome: `windows` compared (final ones), `open` skipped as not final yet, and the
    mismatches (`mismatched` in all, the first MAX_LISTED of them in `mismatches`)."""

    windows: int
    open: int
    mismatched: int
    mismatches: list[Mismatch]

    @property
    def clean(self) -> bool:
        return self.mismatched == 0


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """A time given on the command line: ISO 8601 (a date, or a date and time; UTC unless it
    names an offset), `now`, or an age such as `90s`, `30m`, `2h`, `7d` (that long before now).
    Raises ValueError."""
    now = now or datetime.now(UTC)
    text = text.strip()
    if text == "now":
        return now
    age = _AGO.match(text)
    if age:
        return now - timedelta(seconds=int(age.group(1)) * _UNITS[age.group(2)])
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _literal(text: str) -> str:
    """A ClickHouse string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _plain(value: Decimal) -> str:
    """A decimal without trailing zeros, never in scientific notation ("79.97", "3", "0.00001")."""
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def reconciliation_sql(
    database: str,
    *,
    start: datetime | None,
    end: datetime | None,
    project: str | None,
    granularity: Granularity | None,
    now: float,
    wait_s: float,
    idle_s: float,
    settle_s: float,
    limit: int = MAX_LISTED,
) -> str:
    """The one read statement of a reconciliation: a row of counts and the mismatches (as an
    array of tuples). `wait_s` is grace + lateness: how long after its end the worker's clock
    must pass a window before it is emitted."""
    db = database  # matches the identifier pattern of the settings; every other text is a literal
    sizes = [(g, s) for g, s in GRANULARITY_SECONDS.items() if granularity in (None, g)]
    granularities = "[" + ", ".join(f"({_literal(g)}, {s})" for g, s in sizes) + "]"
    event_filter = ["type IN ('revenue', 'performance', 'feature', 'conversion')"]
    window_filter = ["1"]
    found_filter = ["1"]
    if project is not None:
        event_filter.append(f"project = {_literal(project)}")
        found_filter.append(f"project = {_literal(project)}")
    if granularity is not None:
        found_filter.append(f"granularity = {_literal(granularity)}")
    if start is not None:
        first = int(start.timestamp())
        event_filter.append(f"timestamp >= toDateTime({first}, 'UTC')")
        window_filter.append(f"window_start >= toDateTime({first}, 'UTC')")
        found_filter.append(f"window_start >= toDateTime({first}, 'UTC')")
    if end is not None:
        last = int(end.timestamp())
        event_filter.append(f"timestamp < toDateTime({last}, 'UTC')")
        window_filter.append(f"toUnixTimestamp(window_start) + size <= {last}")
        found_filter.append(f"window_end <= toDateTime({last}, 'UTC')")
    overflow_names = ", ".join(_literal(overflow_name(kind)) for kind in ("revenue", "conversion"))
    # The windows holding an overflow series: compared over all their names.
    overflowed = f"""
        SELECT project, type, granularity, window_start FROM {db}.aggregates
        WHERE name IN ({overflow_names}) OR currency = {_literal(OVERFLOW)}"""  # noqa: S608
    key_name = f"""if((project, type, granularity, window_start) IN ({overflowed}), {_literal(ALL)}, {{}})"""
    # What each event adds, per granularity: the stored decimal of the value (min, max) and the
    # exact one (the sum; 30 decimals take the shortest form of any value the ingest accepts
    # within 1e-30).
    expected = f"""
        SELECT project, type, k_name, k_currency, granularity, window_start,
               1 AS e_present, count() AS e_count, sum(exact) AS e_sum, min(stored) AS e_min,
               max(stored) AS e_max, max(received_ms) AS e_received_ms
        FROM
        (
            SELECT project, type, size, granularity, window_start,
                   CAST({key_name.format("series_name")} AS String) AS k_name,
                   CAST({key_name.format("series_currency")} AS String) AS k_currency,
                   exact, stored, received_ms
            FROM
            (
                SELECT project, type, g.1 AS granularity, g.2 AS size,
                       toDateTime(intDiv(toUnixTimestamp(timestamp), size) * size, 'UTC') AS window_start,
                       multiIf(type = 'revenue', name, type = 'performance', metric,
                               type = 'feature', feature, concat(funnel, ':', step)) AS series_name,
                       if(type = 'revenue', currency, '') AS series_currency,
                       multiIf(type = 'revenue', toDecimal256(assumeNotNull(amount), 30),
                               type = 'performance', toDecimal256(toString(assumeNotNull(value)), 30),
                               toDecimal256(1, 30)) AS exact,
                       multiIf(type = 'revenue', toDecimal128(assumeNotNull(amount), 9),
                               type = 'performance', toDecimal128(toString(assumeNotNull(value)), 9),
                               toDecimal128(1, 9)) AS stored,
                       toUnixTimestamp64Milli(received_at) AS received_ms
                FROM {db}.events FINAL
                ARRAY JOIN {granularities} AS g
                WHERE {" AND ".join(event_filter)}
            )
            WHERE {" AND ".join(window_filter)}
        )
        GROUP BY project, type, k_name, k_currency, granularity, window_start"""  # noqa: S608
    found = f"""
        SELECT project, type, k_name, k_currency, granularity, window_start,
               1 AS f_present, sum(count) AS f_count, sum(sum) AS f_sum, min(min) AS f_min,
               max(max) AS f_max, sum(parts) AS f_parts
        FROM
        (
            SELECT project, type, granularity, window_start, count, sum, min, max, parts,
                   CAST({key_name.format("name")} AS String) AS k_name,
                   CAST({key_name.format("currency")} AS String) AS k_currency
            FROM {db}.windows
            WHERE {" AND ".join(found_filter)}
        )
        GROUP BY project, type, k_name, k_currency, granularity, window_start"""  # noqa: S608
    # The estimated clock of the worker for each project: the slowest of its events partitions,
    # each at its newest event time, moved on with the wall clock once idle for `idle_s`.
    clocks = f"""
        SELECT project, min(clock) AS clock
        FROM (SELECT DISTINCT project, kafka_partition FROM {db}.events) AS placed
        INNER JOIN
        (
            SELECT kafka_partition,
                   toUnixTimestamp64Milli(max(timestamp)) / 1000 AS newest,
                   toUnixTimestamp64Milli(max(received_at)) / 1000 AS arrived,
                   newest + if({now} - arrived >= {idle_s}, {now} - arrived, 0) AS clock
            FROM {db}.events
            GROUP BY kafka_partition
        ) AS partitions USING (kafka_partition)
        GROUP BY project"""  # noqa: S608
    sum_matches = (
        "if(type = 'performance', "
        "abs(toDecimal256(f_sum, 30) - e_sum) * 1000000000 < toDecimal256(f_parts, 30), "
        "toDecimal256(f_sum, 30) = e_sum)"
    )
    mismatch = (
        f"e_present = 0 OR f_present = 0 OR e_count != f_count OR NOT {sum_matches} "
        "OR e_min != f_min OR e_max != f_max"
    )
    size_of = "transform(granularity, ['10s', '1m', '1h'], [10, 60, 3600], 3600)"
    settle_ms = int(settle_s * 1000)
    return f"""
SELECT count() AS windows, countIf(is_open) AS open_windows, countIf(NOT is_open AND is_bad) AS mismatched,
       groupArrayIf({limit})(
           (project, type, k_name, k_currency, granularity, toUnixTimestamp(window_start),
            e_present, e_count, toString(e_sum), toString(e_min), toString(e_max),
            f_present, f_count, toString(f_sum), toString(f_min), toString(f_max), f_parts),
           NOT is_open AND is_bad) AS listed
FROM
(
    SELECT *,
           {mismatch} AS is_bad,
           toUnixTimestamp(window_start) + {size_of} + {wait_s + settle_s}
               > least(if(clock = 0, {now}, clock), {now})
           OR e_received_ms > {int(now * 1000) - settle_ms} AS is_open
    FROM
    (
        SELECT *
        FROM ({expected}) AS expected
        FULL OUTER JOIN ({found}) AS found
        USING (project, type, k_name, k_currency, granularity, window_start)
    ) AS compared
    LEFT JOIN ({clocks}) AS clocks USING (project)
)"""  # noqa: S608


def _totals(present: Any, count: Any, total: Any, low: Any, high: Any) -> Totals | None:
    if not present:
        return None
    return Totals(int(count), Decimal(str(total)), Decimal(str(low)), Decimal(str(high)))


def _mismatch(row: Sequence[Any]) -> Mismatch:
    project, kind, name, currency, granularity, start = row[:6]
    return Mismatch(
        project=str(project),
        type=str(kind),
        name=str(name),
        currency=str(currency),
        granularity=granularity,
        window_start=datetime.fromtimestamp(int(start), UTC),
        expected=_totals(*row[6:11]),
        found=_totals(*row[11:16]),
        parts=int(row[16]),
    )


def check(
    settings: StreamsSettings,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    project: str | None = None,
    granularity: Granularity | None = None,
    settle_s: float = SETTLE_S,
    now: float | None = None,
    run: Runner | None = None,
) -> Reconciliation:
    """Compare the final windows in [start, end] (window_start at or after `start`, window_end at
    or before `end`; either may be None) with the events. `run` runs one read statement (default:
    `cosnap_metrics.query.run_query` with `settings`, which raises QueryError)."""
    if run is None:
        from cosnap_metrics.query import run_query

        def run(sql: str) -> QueryResult:
            return run_query(settings, sql)

    sql = reconciliation_sql(
        settings.clickhouse_database,
        start=start,
        end=end,
        project=project,
        granularity=granularity,
        now=time.time() if now is None else now,
        wait_s=settings.window_grace_s + settings.window_lateness_s,
        idle_s=settings.watermark_idle_s,
        settle_s=settle_s,
    )
    ((windows, open_windows, mismatched, listed),) = run(sql).rows
    mismatches = sorted(
        (_mismatch(row) for row in listed),
        key=lambda m: (
            m.window_start,
            GRANULARITY_SECONDS[m.granularity],
            m.project,
            m.type,
            m.name,
            m.currency,
        ),
    )
    return Reconciliation(int(windows), int(open_windows), int(mismatched), mismatches)


def reconcile(
    settings: StreamsSettings,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    project: str | None = None,
    granularity: Granularity | None = None,
    settle_s: float = SETTLE_S,
    run: Runner | None = None,
) -> list[Mismatch]:
    """The windows that differ from the events (see `check`); empty when the store is consistent."""
    return check(
        settings,
        start=start,
        end=end,
        project=project,
        granularity=granularity,
        settle_s=settle_s,
        run=run,
    ).mismatches


def print_report(result: Reconciliation, out: TextIO) -> None:
    """The mismatches as a table, then one line of summary."""
    if result.mismatches:
        header = list(_HEADER)
        rows = [
            [
                m.window_start.strftime("%Y-%m-%d %H:%M:%S"),
                m.granularity,
                m.project,
                m.type,
                m.name,
                m.currency or "-",
                ",".join(m.differs),
                str(m.expected) if m.expected else "no events",
                (f"{m.found} · {m.parts} parts" if m.found else "no window"),
            ]
            for m in result.mismatches
        ]
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
        for row in [header, *rows]:
            cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
            print("  ".join([*cells, row[-1]]).rstrip(), file=out)
    skipped = f"; {result.open:,} not final yet, skipped" if result.open else ""
    if result.clean:
        print(f"reconcile: {result.windows - result.open:,} windows match metrics.events{skipped}", file=out)
        return
    shown = len(result.mismatches)
    more = f" (the first {shown:,} listed)" if shown < result.mismatched else ""
    print(
        f"reconcile: {result.mismatched:,} of {result.windows - result.open:,} windows differ from "
        f"metrics.events{more}{skipped}",
        file=out,
    )
