"""Streams worker memory (RSS) with 100,000 active series, or with 1,000,000 distinct names.

    python -m bench.streams.memory [--series 100000] [--minutes 3]
    python -m bench.streams.memory --names 1000000 [--max-names 10000]

Starts a real Apache Kafka broker and writes, as the ingest writes them (envelopes of 500,
lz4, acks=all), `--minutes` minutes of performance events in which every series gets one event
per minute: 5 projects (5 partitions) x 100 metric names x 200 routes (the per-dimension cap is
200 values, schemas/series.py). Event time lies early in the previous hour, so every series
keeps its hour window open for the whole run. It starts the worker (`cosnap-metrics streams`),
writes the envelopes once the worker is ready, samples its /proc/<pid>/status every 0.2 s until
the worker's consumer group has committed every record and then until RSS has moved by at most
2 % over 10 s (by then the idle partitions' clocks have usually closed the panes and minutes: the steady
state holds each series' open hour window), and reports the peak (VmHWM) and the steady RSS.

To prove the series were held, it then writes one closer envelope per project two hours later,
which closes every window, and counts the distinct series and the events in the minute windows
the worker emits.

With `--names N` the events are instead N feature events of N distinct feature names (name i
in project i mod 5, one action, spread over `--minutes` minutes of event time): the cap on names
per project and type (COSNAP_MAX_NAMES_PER_TYPE, `--max-names`, default 10,000) admits the
first 10,000 names of each project and counts the events of every later one under the series
named `__overflow__`. After the closer it checks that the minute windows hold every event, that
the `__overflow__` windows hold exactly the events of the names over the cap, and that the
worker's /metrics counted as many (`cosnap_streams_overflow_events_total`).

Bar (BENCHMARKS.md, issue 19): RSS <= 500 MB with 100k active series, and with 1,000,000 distinct
names; exit status 1 above it.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import re
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from bench.kafka import Bench, bench_kafka
from bench.streams import AggregateReader, Worker, committed_offsets, end_offsets
from bench.streams.feed import choose_projects, closers, pack, produce
from schemas.series import MAX_NAMES, OVERFLOW
from schemas.topics import EVENT_PARTITIONS
from tests.conftest import free_port

BAR_MB = 500
PROJECTS = 5
ROUTES = 200  # the cap on distinct values per dimension of a (project, type, name)
STEADY_S = 10.0


def proc_status(path: str) -> dict[str, int]:
    """The memory lines of a /proc/<pid>/status file, in kB: VmRSS, VmHWM and RSS's anonymous
    and file-backed shares, RssAnon and RssFile (empty once the process is gone)."""
    try:
        with open(path) as status:
            lines = status.read().splitlines()
    except FileNotFoundError:
        return {}
    return {
        name: int(value.split()[0])
        for name, value in (line.split(":", 1) for line in lines)
        if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile")
    }


class RssSampler:
    """Samples a process's VmRSS on a thread; VmHWM is the kernel's own peak."""

    def __init__(self, pid: int, every_s: float = 0.2) -> None:
        self._status = f"/proc/{pid}/status"
        self.samples: list[tuple[float, int]] = []  # (monotonic time, RSS in kB)
        self._every = every_s
        self._running = True
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)
        self._thread.start()

    def read(self) -> dict[str, int]:
        """VmRSS and VmHWM in kB (empty once the process is gone)."""
        return proc_status(self._status)

    def _run(self) -> None:
        while self._running:
            found = self.read()
            if "VmRSS" in found:
                self.samples.append((time.monotonic(), found["VmRSS"]))
            time.sleep(self._every)

    def since(self, t: float) -> list[int]:
        return [rss for at, rss in self.samples if at >= t]

    def close(self) -> None:
        self._running = False
        self._thread.join(2)


def mb(kb: float) -> float:
    return kb / 1024


def series_events(
    series: int, minutes: int, projects: list[str], start: datetime, seed: int = 3
) -> Iterator[tuple[str, datetime, dict[str, Any]]]:
    """One api-style latency event per series per minute, in time order; series i is
    (project i/200 mod P, metric i/200/P, route i mod 200)."""
    rng = random.Random(seed)
    step = timedelta(minutes=1) / series
    for minute in range(minutes):
        for i in range(series):
            group, route = divmod(i, ROUTES)
            project_index, metric = group % len(projects), group // len(projects)
            yield projects[project_index], start + timedelta(minutes=minute) + step * i, {
                "event_id": uuid.uuid4().hex,
                "type": "performance",
                "metric": f"bench.latency.m{metric:03d}",
                "value": round(rng.lognormvariate(4.7, 0.5), 1),
                "unit": "ms",
                "user_id": f"u{rng.randint(1, 20000)}",
                "tags": {"route": f"/api/r{route:03d}", "status": "200"},
            }  # fmt: skip


def name_events(
    names: int, minutes: int, projects: list[str], start: datetime, seed: int = 3
) -> Iterator[tuple[str, datetime, dict[str, Any]]]:
    """One feature event per name, in time order over `minutes`: name i in project i mod P (a
    feature per user or per request, as a runaway client would send)."""
    rng = random.Random(seed)
    step = timedelta(minutes=minutes) / names
    for i in range(names):
        yield projects[i % len(projects)], start + step * i, {
            "event_id": uuid.uuid4().hex,
            "type": "feature",
            "feature": f"bench.feature.n{i:07d}",
            "action": "used",
            "user_id": f"u{rng.randint(1, 20000)}",
        }  # fmt: skip


def overflow_minutes(bench: Bench, ignore_from: str) -> tuple[int, int]:
    """(events, windows) of the minute windows of series named `__overflow__` on the aggregates
    topic, read from its beginning to its end (the closers' windows left out)."""
    consumer = Consumer(
        {"bootstrap.servers": bench.bootstrap, "group.id": f"bench-overflow-{uuid.uuid4().hex[:6]}",
         "enable.auto.commit": False}
    )  # fmt: skip
    ends = end_offsets(bench.bootstrap, bench.topics.aggregates, EVENT_PARTITIONS)
    consumer.assign(
        [TopicPartition(bench.topics.aggregates, p, OFFSET_BEGINNING) for p, end in ends.items() if end]
    )
    positions = dict.fromkeys(ends, 0)
    events = windows = 0
    deadline = time.monotonic() + 120
    try:
        while any(positions[p] < end for p, end in ends.items()) and time.monotonic() < deadline:
            for message in consumer.consume(10_000, 0.5):
                key, value = message.key(), message.value()
                partition, offset = message.partition(), message.offset()
                if message.error() is not None or key is None or value is None:
                    continue
                if partition is not None and offset is not None:
                    positions[partition] = offset + 1
                _, granularity, start = key.decode().split("|")
                if granularity != "1m" or start[:19] >= ignore_from[:19]:
                    continue
                window = orjson.loads(value)
                if window["name"] == OVERFLOW:
                    events += window["count"]
                    windows += 1
    finally:
        consumer.close()
    return events, windows


def overflow_counted(metrics_url: str) -> float:
    """The worker's cosnap_streams_overflow_events_total, all types (0 when absent)."""
    text = httpx.get(f"{metrics_url}/metrics", timeout=10).text
    found = re.findall(r"^cosnap_streams_overflow_events_total\{[^}]*\} (\S+)$", text, re.MULTILINE)
    return sum(map(float, found))


def wait_steady(rss: RssSampler, timeout: float) -> tuple[list[int], bool]:
    """The RSS samples of the first STEADY_S seconds within which RSS moved by at most 2 %
    (the last STEADY_S seconds and False if that did not happen within `timeout`)."""
    began = time.monotonic()
    while True:
        time.sleep(1)
        now = time.monotonic()
        window = rss.since(now - STEADY_S)
        if now - began >= STEADY_S and max(window) - min(window) <= 0.02 * max(window):
            return window, True
        if now - began >= timeout:
            return window, False


def wait_consumed(bench: Bench, worker: Worker, rss: RssSampler, timeout: float) -> bool:
    """Until the worker's group has committed every events record; False on timeout."""
    group = f"{bench.topics.internal}streams"
    ends = end_offsets(bench.bootstrap, bench.topics.events, EVENT_PARTITIONS)
    total = sum(ends.values())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not worker.alive():
            raise SystemExit(f"the worker exited with {worker.process.returncode}:\n{worker.tail()}")
        committed = committed_offsets(bench.bootstrap, group, bench.topics.events, EVENT_PARTITIONS)
        done = sum(max(0, committed.get(p, 0)) for p in ends)
        now = rss.read()
        bench.progress.update(
            f"worker: committed {done:,}/{total:,} records, RSS {mb(now.get('VmRSS', 0)):.0f} MB, "
            f"peak {mb(now.get('VmHWM', 0)):.0f} MB",
            done / total,
        )
        if all(committed.get(p, -1) >= end for p, end in ends.items() if end):
            bench.progress.finish(f"worker: committed all {total:,} records")
            return True
        time.sleep(5)
    bench.progress.finish(f"worker: committed {done:,}/{total:,} records after {timeout:.0f} s")
    return False


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--series", type=int, default=100_000, help="distinct active series")
    parser.add_argument(
        "--minutes", type=int, default=3, help="minutes of event time (one event per series each)"
    )
    parser.add_argument(
        "--names",
        type=int,
        default=0,
        help="instead of --series: this many distinct feature names, one event each",
    )
    parser.add_argument(
        "--max-names",
        type=int,
        default=MAX_NAMES,
        help="the worker's COSNAP_MAX_NAMES_PER_TYPE (with --names)",
    )
    parser.add_argument("--timeout", type=float, default=180, help="longest wait for each phase")
    args = parser.parse_args()
    metrics = math.ceil(args.series / ROUTES / PROJECTS)
    if metrics > 1000:
        raise SystemExit("at most 1,000,000 series (5 projects x 1000 metrics x 200 routes)")
    over_cap = closers_over = 0
    if args.names:  # per project: the first max_names names are series, the rest one __overflow__
        per_project = [len(range(p, args.names, PROJECTS)) for p in range(PROJECTS)]
        args.series = sum(min(n, args.max_names) + (n > args.max_names) for n in per_project)
        over_cap = sum(max(0, n - args.max_names) for n in per_project)
        closers_over = sum(n >= args.max_names for n in per_project)  # `bench.closer` is a name too

    with bench_kafka("streams-memory") as bench:
        projects = choose_projects(PROJECTS)
        hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        start = hour - timedelta(minutes=55)  # hh:05 of the previous hour: its hour window stays open
        closer_at = start + timedelta(hours=2)
        if args.names:
            events = args.names
            envelopes = list(pack(name_events(args.names, args.minutes, projects, start)))
        else:
            events = args.series * args.minutes
            envelopes = list(pack(series_events(args.series, args.minutes, projects, start)))

        reader = AggregateReader(bench, closer_at.replace(second=0).isoformat().replace("+00:00", "Z"))
        bench.progress.note("starting the streams worker")
        metrics_port = free_port()
        worker = Worker(
            bench,
            COSNAP_STREAMS_METRICS_PORT=str(metrics_port),
            COSNAP_MAX_NAMES_PER_TYPE=str(args.max_names),
        )
        rss = RssSampler(worker.pid)
        try:
            worker.wait_ready()
            idle = rss.read()["VmRSS"]
            began = time.perf_counter()
            bench.progress.note(f"writing {len(envelopes):,} envelopes to the running worker")
            written = produce(bench.bootstrap, bench.topics.events, envelopes)
            del envelopes
            shape = (
                f"{args.names:,} distinct feature names in {PROJECTS} projects, one event each, cap "
                f"{args.max_names:,} names per project and type: {args.series:,} series"
                if args.names
                else f"{args.series:,} series ({PROJECTS} projects x {metrics} metrics x {ROUTES} routes)"
            )
            print(
                f"streams memory benchmark: {shape}, {events:,} events in {written.records:,} envelopes, "
                f"envelopes per partition {dict(sorted(written.partitions.items()))}, event time "
                f"{start:%H:%M}-{start + timedelta(minutes=args.minutes):%H:%M} UTC, written in "
                f"{time.perf_counter() - began:.0f} s to the running worker (idle RSS {mb(idle):.0f} MB)",
                flush=True,
            )
            consumed = wait_consumed(bench, worker, rss, args.timeout)
            if not consumed:
                print(f"  the worker's group had not committed every record after {args.timeout:.0f} s; "
                      "measuring anyway")  # fmt: skip
            bench.progress.note(f"waiting for RSS to hold within 2 % for {STEADY_S:.0f} s")
            steady, stable = wait_steady(rss, args.timeout)
            active = rss.read()
            open_when_measured = dict(sorted(reader.tally.records.items()))
            print(
                f"  active: peak RSS {mb(active['VmHWM']):.0f} MB; "
                f"{'steady' if stable else 'NOT steady'} RSS over {STEADY_S:.0f} s median "
                f"{mb(statistics.median(steady)):.0f} MB (min {mb(min(steady)):.0f}, max "
                f"{mb(max(steady)):.0f}); windows emitted so far {open_when_measured}",
                flush=True,
            )

            bench.progress.note("closing every window (one closer envelope per project)")
            produce(bench.bootstrap, bench.topics.events, closers(projects, closer_at))
            tally = reader.tally
            deadline = time.monotonic() + args.timeout
            while (
                len(tally.minute_series) < args.series
                or tally.minute_events < events
                or tally.records["1h"] < args.series
            ) and time.monotonic() < deadline:
                if not worker.alive():
                    raise SystemExit(f"the worker exited with {worker.process.returncode}:\n{worker.tail()}")
                time.sleep(0.5)
            time.sleep(2)  # anything beyond the expected counts would be duplicates
            closing = rss.read()
            held = len(tally.minute_series)
            if args.names:
                overflow_events, overflow_windows = overflow_minutes(bench, reader.tally.ignore_from)
                counted = overflow_counted(f"http://127.0.0.1:{metrics_port}")
                print(
                    f"  names over the cap: {over_cap:,} events expected under {OVERFLOW}; minute windows "
                    f"named {OVERFLOW}: {overflow_windows} holding {overflow_events:,} events; the worker's "
                    f"cosnap_streams_overflow_events_total: {counted:,.0f} (with {closers_over} closers)",
                    flush=True,
                )
            print(
                f"  after the closer: minute windows of {held:,} distinct series holding "
                f"{tally.minute_events:,} of {events:,} events, {tally.overflow_windows} with "
                f"__overflow__; windows emitted {dict(sorted(tally.records.items()))}; peak RSS "
                f"including closing every window {mb(closing.get('VmHWM', 0)):.0f} MB",
                flush=True,
            )
        finally:
            rss.close()
            worker.stop()
            reader.close()

        peak = mb(active["VmHWM"])
        verified = held == args.series and tally.minute_events == events
        if args.names:
            verified = verified and overflow_events == over_cap and counted == over_cap + closers_over
        print("\n| distinct names | active series | events | peak RSS | steady RSS | closing peak RSS |")
        print("|---|---|---|---|---|---|")
        print(f"| {f'{args.names:,}' if args.names else '—'} | {held:,} | {events:,} | {peak:.0f} MB | "
              f"{mb(statistics.median(steady)):.0f} MB | {mb(closing.get('VmHWM', 0)):.0f} MB |")  # fmt: skip
        what = f"{args.names:,} distinct names" if args.names else f"{args.series:,} active series"
        print(f"\nbar: peak RSS <= {BAR_MB} MB with {what}: "
              f"{'met' if peak <= BAR_MB else 'NOT met'}; series verified: {verified}")  # fmt: skip
        print(f"measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores")
        return 0 if peak <= BAR_MB and verified else 1


if __name__ == "__main__":
    sys.exit(main())
