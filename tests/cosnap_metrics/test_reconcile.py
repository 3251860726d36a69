"""`cosnap-metrics reconcile` against real chDB: windows written by hand from known events (an
on-time part and a correction part, an overflow series) are clean; a wrong correction, a missing
window, a window without events or a sum off by a billionth are reported with exit status 1;
windows the worker may not have written yet are skipped. Then the real CLI after traffic through
the pipeline (sink, streams worker, ingest): clean, and a wrong window record sent through Kafka
is found."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from clickhouse_connect.driver.client import Client
from kafka import KafkaProducer

from cosnap_metrics.broker import KafkaBroker
from cosnap_metrics.reconcile import ALL, Reconciliation, check, parse_time
from plumbing.clickhouse import connect
from schemas.records import GRANULARITY_SECONDS, WindowAggregate
from schemas.settings import StreamsSettings
from sinks.clickhouse.ddl import apply_migrations
from tests.conftest import Pipeline, free_port, wait_for

HOUR = 3600


@dataclass
class Store:
    """chDB in a directory of the test, with the settings a CLI run would read from its environment."""

    path: Path
    client: Client
    env: dict[str, str]

    @property
    def settings(self) -> StreamsSettings:
        return StreamsSettings.model_validate(
            {k.removeprefix("COSNAP_").lower(): v for k, v in self.env.items() if k.startswith("COSNAP_")}
        )

    def check(self, **options: Any) -> Reconciliation:
        """Through the query path of the CLI (`cosnap_metrics.query.run_query`), in this process."""
        return check(self.settings, **options)

    def insert(self, table: str, rows: list[dict[str, Any]]) -> None:
        lines = "\n".join(orjson.dumps(row).decode() for row in rows)
        self.client.command(f"INSERT INTO metrics.{table} FORMAT JSONEachRow {lines}")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The real command in a process of its own, which opens chDB itself (no sink runs): the
        test's client is closed meanwhile, as chDB lets one process open a directory."""
        self.client.close()
        try:
            return subprocess.run(
                [sys.executable, "-m", "cosnap_metrics.cli", "reconcile", *args],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=120,
            )
        finally:
            self.client = connect(f"chdb://{self.path}")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    path = tmp_path / "clickhouse"
    client = connect(f"chdb://{path}")
    apply_migrations(client, "metrics")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COSNAP_")} | {
        "COSNAP_DATA_DIR": str(tmp_path / "data"),
        "COSNAP_CLICKHOUSE_URL": f"chdb://{path}",
        "COSNAP_QUERY_URL": f"http://127.0.0.1:{free_port()}",  # no sink: the CLI opens chDB
        "COSNAP_WINDOW_GRACE_S": "25",
        "COSNAP_WINDOW_LATENESS_S": "5",
        "COSNAP_WATERMARK_IDLE_S": "5",
    }
    found = Store(path, client, env)
    yield found
    found.client.close()


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def known_events(base: int) -> list[dict[str, Any]]:
    """Events of the four types over two minutes after `base` (an hour boundary), with the
    fields of metrics.events; `at` is the event time in seconds."""
    bodies: list[tuple[int, dict[str, Any]]] = [
        (1, {"type": "revenue", "name": "subscription.started", "amount": "9.99", "currency": "USD"}),
        (12, {"type": "revenue", "name": "subscription.started", "amount": "59.99", "currency": "USD"}),
        (75, {"type": "revenue", "name": "subscription.started", "amount": "4.99", "currency": "EUR"}),
        (3, {"type": "performance", "metric": "api.latency", "value": 120.5, "unit": "ms"}),
        (4, {"type": "performance", "metric": "api.latency", "value": 0.1234567896, "unit": "ms"}),
        (70, {"type": "performance", "metric": "api.latency", "value": 2.5, "unit": "s"}),
        (5, {"type": "feature", "feature": "share", "action": "clicked"}),
        (6, {"type": "feature", "feature": "share", "action": "saved"}),
        (7, {"type": "conversion", "funnel": "onboarding", "step": "app_opened", "step_index": 0}),
        (8, {"type": "conversion", "funnel": "onboarding", "step": "signed_up", "step_index": 1}),
    ]
    return [
        {"event_id": f"e{n}", "project": "p1", "at": base + second, "kafka_partition": 0, "kafka_offset": n}
        | body
        for n, (second, body) in enumerate(bodies)
    ]


def event_rows(events: list[dict[str, Any]], received_after: float = 1.0) -> list[dict[str, Any]]:
    rows = []
    for event in events:
        row = {k: v for k, v in event.items() if k != "at"}
        rows.append(row | {"timestamp": iso(event["at"]), "received_at": iso(event["at"] + received_after)})
    return rows


def series_of(event: dict[str, Any]) -> tuple[str, str, dict[str, str]]:
    kind = event["type"]
    if kind == "revenue":
        return event["name"], event["currency"], {}
    if kind == "performance":
        return event["metric"], "", {"unit": event["unit"]}
    if kind == "feature":
        return event["feature"], "", {"action": event["action"]}
    return f"{event['funnel']}:{event['step']}", "", {}


def value_of(event: dict[str, Any]) -> Decimal:
    if event["type"] == "revenue":
        return Decimal(event["amount"])
    if event["type"] == "performance":
        return Decimal(repr(event["value"]))
    return Decimal(1)


def window_rows(events: list[dict[str, Any]], part: int = 0, name: str | None = None) -> list[dict[str, Any]]:
    """The aggregates rows the pipeline writes for `events`: on-time rows (part 0) or the
    correction rows of one events record (`part`); `name` counts them under another name."""
    groups: dict[tuple[Any, ...], list[Decimal]] = defaultdict(list)
    for event in events:
        series, currency, dims = series_of(event)
        series = name or series
        for granularity, size in GRANULARITY_SECONDS.items():
            start = event["at"] // size * size
            key = (event["project"], event["type"], series, currency, tuple(sorted(dims.items())))
            groups[(*key, granularity, start, size)].append(value_of(event))
    rows = []
    for (project, kind, series, currency, dims, granularity, start, size), values in groups.items():
        total = sum(values, Decimal(0))
        rows.append(
            {
                "project": project,
                "type": kind,
                "name": series,
                "currency": currency,
                "dims": dict(dims),
                "series_id": f"{kind}|{series}|{currency}|{dims}",
                "granularity": granularity,
                "window_start": start,
                "window_end": start + size,
                "part": part,
                "count": len(values),
                "sum": format(total, "f"),
                "min": format(min(values), "f"),
                "max": format(max(values), "f"),
                "mean": float(total) / len(values),
                "emitted_at": iso(start + size + 30),
            }
        )
    return rows


def base_hour(hours_ago: int = 3) -> int:
    return (int(datetime.now(UTC).timestamp()) // HOUR - hours_ago) * HOUR


def test_windows_with_a_correction_part_and_an_overflow_series_are_clean(store: Store) -> None:
    base = base_hour()
    events = known_events(base)
    # Two late events: one in a window of its own series, one counted under the overflow name.
    late = {
        "event_id": "late1", "project": "p1", "type": "revenue", "name": "subscription.started",
        "amount": "0.01", "currency": "USD", "at": base + 2, "kafka_partition": 0, "kafka_offset": 40,
    }  # fmt: skip
    capped = {
        "event_id": "cap1", "project": "p1", "type": "feature", "feature": "one.too.many",
        "action": "used", "at": base + 5, "kafka_partition": 0, "kafka_offset": 41,
    }  # fmt: skip
    store.insert("events", event_rows([*events, late, capped]))
    store.insert(
        "aggregates",
        window_rows(events) + window_rows([late], part=41) + window_rows([capped], name="__overflow__"),
    )

    result = store.check()
    assert result.mismatches == [] and result.clean
    # Per granularity the (type, name, currency) of known_events: 8 panes, 7 minutes, 6 hours.
    assert result.windows - result.open == 8 + 7 + 6
    assert result.open == 0

    done = store.cli()
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().splitlines() == [f"reconcile: {result.windows} windows match metrics.events"]


def test_a_wrong_correction_a_missing_window_and_a_window_without_events_are_reported(store: Store) -> None:
    base = base_hour()
    events = known_events(base)
    store.insert("events", event_rows(events))
    written = window_rows(events)
    missing = next(r for r in written if r["name"] == "onboarding:signed_up" and r["granularity"] == "1m")
    store.insert("aggregates", [r for r in written if r is not missing])
    # A replayed late record counted once more under a part of its own: twice the EUR revenue.
    eur = [e for e in events if e.get("currency") == "EUR"]
    store.insert("aggregates", [r for r in window_rows(eur, part=77) if r["granularity"] == "10s"])
    # A window for a minute in which nothing happened.
    (ghost,) = [r for r in window_rows([events[6] | {"at": base + 600}]) if r["granularity"] == "1m"]
    store.insert("aggregates", [ghost])

    result = store.check()
    described = [
        (m.granularity, m.type, m.name, m.currency, m.window_start, m.differs) for m in result.mismatches
    ]
    at = datetime.fromtimestamp
    assert described == [
        ("1m", "conversion", "onboarding:signed_up", "", at(base, UTC), ["window"]),
        ("10s", "revenue", "subscription.started", "EUR", at(base + 70, UTC), ["count", "sum"]),
        ("1m", "feature", "share", "", at(base + 600, UTC), ["window"]),
    ]
    doubled = result.mismatches[1]
    assert doubled.expected is not None and doubled.found is not None
    assert (doubled.expected.count, doubled.expected.sum) == (1, Decimal("4.99"))
    assert (doubled.found.count, doubled.found.sum, doubled.parts) == (2, Decimal("9.98"), 2)
    assert result.mismatches[0].found is None and result.mismatches[2].expected is None

    done = store.cli()
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].split() == ["window", "(UTC)", "gran", "project", "type", "name", "currency"] + [
        "differs", "expected", "found",
    ]  # fmt: skip
    eur_line = next(line for line in lines if "EUR" in line)
    assert at(base + 70, UTC).strftime("%Y-%m-%d %H:%M:%S") in eur_line
    assert "count 1 · sum 4.99 · min 4.99 · max 4.99" in eur_line
    assert "count 2 · sum 9.98 · min 4.99 · max 4.99 · 2 parts" in eur_line
    assert "no window" in next(line for line in lines if "onboarding:signed_up" in line)
    assert "no events" in next(line for line in lines if " share " in line)
    assert lines[-1] == f"reconcile: 3 of {result.windows} windows differ from metrics.events"

    # The options narrow what is compared (on the command line, then through the Python API).
    narrow = store.cli("--from", iso(base + 60), "--to", iso(base + 120), "--granularity", "10s")
    assert narrow.returncode == 1, narrow.stdout + narrow.stderr
    assert narrow.stdout.strip().splitlines()[-1] == "reconcile: 1 of 2 windows differ from metrics.events"
    assert store.cli("--from", "2h59m").returncode == 2  # not a time: argparse's usage error
    assert len(store.check(granularity="10s").mismatches) == 1
    assert store.check(granularity="1h").clean and store.check(project="another").windows == 0
    first_minute = store.check(start=at(base, UTC), end=at(base + 60, UTC))
    assert [m.name for m in first_minute.mismatches] == ["onboarding:signed_up"]


def test_sums_are_exact_to_the_billionth(store: Store) -> None:
    base = base_hour()
    events = [e for e in known_events(base) if e["type"] in ("revenue", "performance")]
    store.insert("events", event_rows(events))
    rows = window_rows(events)
    for row in rows:
        if row["currency"] == "USD" and row["granularity"] == "1h":
            row["sum"] = str(Decimal(row["sum"]) + Decimal("0.000000001"))
    store.insert("aggregates", rows)

    (off,) = store.check().mismatches
    assert (off.granularity, off.currency, off.differs) == ("1h", "USD", ["sum"])
    assert off.found is not None and off.found.sum == Decimal("69.980000001")
    # 0.1234567896 has ten decimals: stored as 0.123456789 in each part, within 1e-9 per part.
    latency = store.check(granularity="10s", project="p1")
    assert latency.clean and latency.windows == 5


def test_windows_the_worker_may_not_have_written_are_skipped(store: Store) -> None:
    minute = (int(datetime.now(UTC).timestamp()) // 60 - 10) * 60
    # An event of the first second of a minute received 300 s later (an SDK's buffer), and
    # nothing written for it yet. Grace 25 + lateness 5 + settle 15: a window is compared once
    # the partition's clock is 45 s past its end; the clock is at the newest event time (this
    # one), moving on with the wall clock 5 s after the last arrival.
    recent = {
        "event_id": "r1", "project": "p1", "type": "feature", "feature": "share", "action": "clicked",
        "at": minute + 1, "kafka_partition": 3, "kafka_offset": 0,
    }  # fmt: skip
    store.insert("events", event_rows([recent], received_after=300))
    received = minute + 301
    # Received under 15 s (settle) ago: every window of it is open.
    assert (store.check(now=received + 10).open, store.check(now=received + 10).mismatched) == (3, 0)
    # 60 s after its arrival the clock is at minute + 61: the pane (end + 45 = minute + 55) is
    # due and missing; the minute (minute + 105) and the hour are still open.
    later = store.check(now=received + 60)
    assert later.open == 2 and [m.granularity for m in later.mismatches] == ["10s"]
    assert later.mismatches[0].found is None


def test_times_on_the_command_line() -> None:
    now = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    assert parse_time("now", now) == now
    assert parse_time("90m", now) == now - timedelta(minutes=90)
    assert parse_time("7d", now) == now - timedelta(days=7)
    assert parse_time("2026-11-26", now) == datetime(2026, 11, 26, tzinfo=UTC)
    assert parse_time("2026-11-26T09:30:00+01:00", now) == datetime(2026, 11, 26, 8, 30, tzinfo=UTC)
    with pytest.raises(ValueError):
        parse_time("yesterday", now)
    assert ALL == "*"


def pipeline_settings(pipeline: Pipeline) -> StreamsSettings:
    """The settings of the pipeline's processes (tests/conftest.py), as the CLI reads them."""
    return StreamsSettings(
        data_dir=pipeline.data_dir,
        query_url=pipeline.query_url,
        window_grace_s=float(pipeline.env["COSNAP_WINDOW_GRACE_S"]),
        window_lateness_s=float(pipeline.env["COSNAP_WINDOW_LATENESS_S"]),
        watermark_idle_s=float(pipeline.env["COSNAP_WATERMARK_IDLE_S"]),
    )


def traffic(minute: datetime) -> list[dict[str, Any]]:
    """Two minutes of events of the four types starting at `minute`, with client event ids."""
    events: list[dict[str, Any]] = []

    def add(second: int, body: dict[str, Any]) -> None:
        at = (minute + timedelta(seconds=second)).isoformat()
        events.append({"event_id": f"rc-{len(events)}", "timestamp": at, "user_id": "u1"} | body)

    for second in range(0, 112, 7):  # the last events at second 108: two minutes
        add(second, {"type": "revenue", "name": "subscription.renewal", "amount": "9.99", "currency": "USD"})
        add(
            second + 1, {"type": "performance", "metric": "api.latency", "value": 10.5 + second, "unit": "ms"}
        )
        add(second + 2, {"type": "feature", "feature": "ai_effect.anime", "action": "applied"})
        add(second + 3, {"type": "conversion", "funnel": "onboarding", "step": "app_opened", "step_index": 0})
    add(30, {"type": "revenue", "name": "subscription.renewal", "amount": "1234.5", "currency": "EUR"})
    # In event-time order: no event of a later request is late for the worker.
    return sorted(events, key=lambda e: str(e["timestamp"]))


def produce_window(bootstrap: str, topic: str, record: WindowAggregate) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        key = f"{record.series_id}|{record.granularity}|{record.window_start.isoformat()}"
        producer.send(topic, key=key.encode(), value=record.model_dump_json().encode())
        producer.flush(timeout=30)
    finally:
        producer.close()


@pytest.mark.kafka
def test_the_cli_after_traffic_through_the_pipeline(pipeline: Pipeline, kafka: KafkaBroker) -> None:
    pipeline.start("sink", "streams", "ingest")
    minute = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=3)
    events = traffic(minute)
    pipeline.post(events)
    pipeline.post(events[:8])  # a client's retry: the same event ids count once
    settings = pipeline_settings(pipeline)
    # The windows reconcile compares: per (type, currency) and pane or minute.
    keys = [
        (e["type"], e.get("currency"), datetime.fromisoformat(e["timestamp"]).timestamp()) for e in events
    ]
    panes = len({(kind, currency, at // 10) for kind, currency, at in keys})
    minutes = len({(kind, currency, at // 60) for kind, currency, at in keys})
    assert minutes == 2 * 4 + 1  # EUR revenue in the first minute only

    def all_compared() -> Reconciliation | None:
        by_granularity = {g: check(settings, granularity=g) for g in ("10s", "1m")}
        compared = {g: r.windows - r.open for g, r in by_granularity.items()}
        clean = all(r.clean for r in by_granularity.values())
        done = clean and compared == {"10s": panes, "1m": minutes}
        return by_granularity["1m"] if done else None

    assert wait_for(all_compared, timeout=120, interval=1), (
        [check(settings, granularity=g) for g in ("10s", "1m")],
        pipeline.log("streams")[-2000:],
    )

    done = subprocess.run(
        [sys.executable, "-m", "cosnap_metrics.cli", "reconcile"],
        env=pipeline.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    summary = done.stdout.strip().splitlines()[-1]
    assert summary.startswith("reconcile: ") and " windows match metrics.events" in summary

    # A window record with a wrong count, as a faulty worker would send it: the sink writes it
    # over the on-time row, and reconcile finds exactly that window.
    (row,) = pipeline.query(
        "SELECT project, type, name, currency, dims, series_id, granularity, toUnixTimestamp(window_start), "
        "toUnixTimestamp(window_end), count, toString(sum), toString(min), toString(max), mean "
        "FROM metrics.aggregates FINAL WHERE type = 'feature' AND granularity = '1m' AND part = 0 "
        "ORDER BY window_start LIMIT 1"
    )
    project, kind, name, currency, dims, series_id, granularity, start, end, count, total, low, high, mean = (
        row
    )
    wrong = WindowAggregate.model_validate(
        {
            "project": project, "type": kind, "name": name, "currency": currency, "dims": dims,
            "series_id": series_id, "granularity": granularity,
            "window_start": datetime.fromtimestamp(int(str(start)), UTC),
            "window_end": datetime.fromtimestamp(int(str(end)), UTC),
            "count": int(str(count)) + 1, "sum": Decimal(str(total)) + 1, "min": low, "max": high,
            "mean": mean,
            "emitted_at": datetime.now(UTC),
        }
    )  # fmt: skip
    produce_window(kafka.bootstrap, pipeline.topics.aggregates, wrong)

    def found() -> list[Any]:
        return check(settings).mismatches

    (mismatch,) = wait_for(found, timeout=30)
    assert (mismatch.granularity, mismatch.type, mismatch.name, mismatch.differs) == (
        "1m", "feature", "ai_effect.anime", ["count", "sum"],
    )  # fmt: skip
    failed = subprocess.run(
        [sys.executable, "-m", "cosnap_metrics.cli", "reconcile", "--granularity", "1m"],
        env=pipeline.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "ai_effect.anime" in failed.stdout and "reconcile: 1 of " in failed.stdout
