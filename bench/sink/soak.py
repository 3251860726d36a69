"""The sink alone under a steady load, for its memory: is it flat, and what grows if not.

    python -m bench.sink.soak [--rate 7500] [--minutes 30] [--warmup 600] [--sample 10]
                              [--env NAME=VALUE ...]

Starts a real Apache Kafka broker and `cosnap-metrics sink` as `make run` starts it (embedded
chDB in a fresh directory, its query service beside it), and writes straight into Kafka, at
`--rate` events/s for `--minutes`, what the sink consumes in a run of the pipeline:

- events: the demo's mix (bench/streams/feed.py: built and packed as the ingest writes them, in
  envelopes of 500, six projects on six partitions). A pool of POOL_SECONDS of them is built
  once and written again and again, each time with fresh event ids and times shifted to now, so
  every event is a new row;
- windows: the same envelopes folded by the worker's own `EventTimeWindows` (streams/windows.py,
  the worker's lateness and grace), the windows it closes written to the aggregates topic each
  second as the worker writes them.

Every `--sample` seconds it reads the sink's RSS (VmRSS, and its anonymous and file-backed
shares, /proc/<pid>/status) and its `/metrics`: the rows inserted, and the store's own figures
(sinks/clickhouse/metrics.py, StoreMemory): chDB's tracked memory and caches, its allocator's
resident bytes, the active parts with their primary index and marks in memory. Each figure is
printed as sampled; at the end, for each, over the samples after the warm-up (`--warmup`, 10
minutes by default: why, bench/pipeline's WARMUP_S): start, end and the least-squares slope per 10
minutes (of the samples and of their floor) and per million rows stored, so that memory that
follows the data can be told from a leak.

Flat (the bar of bench/pipeline's soak): the floor of RSS (its lowest over the last minute, so
that a sample taken during a merge does not count as kept) grows by at most max(5 MiB, 1 % of its
start) per 10 minutes. What the engine holds in memory for the rows stored (the primary index
and marks of the active parts) is bounded by the data, not by time: the judgement is on RSS less
those, and their bytes per row are printed beside it. Exit status 1 when not flat or the sink fell behind.
`--env` passes settings to the sink's environment (e.g. `--env MALLOC_ARENA_MAX=2`).
"""

from __future__ import annotations

import argparse
import math
import os
import queue
import re
import statistics
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson

from bench.kafka import bench_kafka
from bench.pipeline.__main__ import FLOOR_S, WARMUP_S, Trend, trend
from bench.services import Services
from bench.sink.__main__ import PROJECTS
from bench.streams.feed import EVENTS_PER_ENVELOPE, Envelope, choose_projects, cosnap_mix, pack, produce
from bench.streams.memory import proc_status
from schemas.series import DEFAULT_SERIES
from schemas.settings import StreamsSettings
from schemas.topics import EVENT_PARTITIONS
from streams.envelope import decode
from streams.series import SeriesResolver
from streams.watermark import Watermark
from streams.windows import EventTimeWindows

POOL_SECONDS = 20  # of events at the rate, built once and written again with new ids and times
MIB = 1024 * 1024
_LABEL = re.compile(r'(\w+)="([^"]*)"')
_SAMPLE = re.compile(r"^(cosnap_sink_[a-z_]+)(?:\{([^}]*)\})? (\S+)$", re.M)


def iso_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def epoch_ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


@dataclass(frozen=True)
class PoolEnvelope:
    project: str
    body: dict[str, Any]  # the envelope decoded; its events are rewritten in place before each write
    events: list[tuple[str, int, int]]  # each event's id, timestamp and received_at (epoch ms)


def build_pool(rate: int, projects: list[str]) -> tuple[list[PoolEnvelope], int]:
    """POOL_SECONDS of events at `rate`, as envelopes, and the epoch ms the pool starts at."""
    span = timedelta(seconds=POOL_SECONDS)
    start = datetime.now(UTC) - span
    pool = []
    for project, value in pack(cosnap_mix(rate * POOL_SECONDS, projects, start, span)):
        body = orjson.loads(value)
        times = [
            (e["event_id"], epoch_ms(e["timestamp"]), epoch_ms(e["received_at"])) for e in body["events"]
        ]
        pool.append(PoolEnvelope(project, body, times))
    return pool, int(start.timestamp() * 1000)


def paced(
    pool: list[PoolEnvelope], pool_start_ms: int, seconds: float, stop: threading.Event
) -> Iterator[Envelope]:
    """The pool's envelopes, again and again, evenly over time for `seconds`: pass n of the pool
    gives every event the id `<its id>-<n>` and its times shifted by n pool spans from now."""
    began, wall_ms = time.monotonic(), int(time.time() * 1000)
    step = POOL_SECONDS / len(pool)
    sent = 0
    while not stop.is_set():
        lap, index = divmod(sent, len(pool))
        due = sent * step
        if due >= seconds:
            return
        if (wait := began + due - time.monotonic()) > 0:
            stop.wait(wait)
        envelope = pool[index]
        shift = wall_ms - pool_start_ms + lap * POOL_SECONDS * 1000
        for event, (event_id, at, received) in zip(envelope.body["events"], envelope.events, strict=True):
            event["event_id"] = f"{event_id}-{lap}"
            event["timestamp"] = iso_ms(at + shift)
            event["received_at"] = iso_ms(received + shift)
        yield envelope.project, orjson.dumps(envelope.body)
        sent += 1


class Windows:
    """The worker's windows of the envelopes written, closed each second onto `out` as
    (key, value) records for the aggregates topic; None on `out` once `close()` ran."""

    def __init__(self) -> None:
        settings = StreamsSettings()
        self._windows = EventTimeWindows(
            Watermark(lateness_s=settings.window_lateness_s, idle_s=settings.watermark_idle_s),
            grace_s=settings.window_grace_s,
            series=SeriesResolver(DEFAULT_SERIES, settings.max_names_per_type),
        )
        self._offsets = dict.fromkeys(range(EVENT_PARTITIONS), 0)
        self._closed_at = 0.0
        self.out: queue.SimpleQueue[Envelope | None] = queue.SimpleQueue()
        self.records = 0

    def fold(self, envelopes: Iterator[Envelope]) -> Iterator[Envelope]:
        """Pass the envelopes on, folding each as the worker would."""
        for project, value in envelopes:
            partition = zlib.crc32(project.encode()) % EVENT_PARTITIONS
            now = time.time()
            self._windows.add_envelope(partition, decode(value), now, self._offsets[partition])
            self._offsets[partition] += 1
            if now - self._closed_at >= 1:
                self._close(now)
            yield project, value

    def _close(self, now: float) -> None:
        self._closed_at = now
        for closed in self._windows.close_ready(now):
            for key, value in closed.records:
                self.out.put((key.decode(), value))
                self.records += 1

    def close(self) -> None:
        self.out.put(None)


@dataclass
class Sample:
    at: float  # monotonic s
    figures: dict[str, float]  # name -> value (bytes, or a count)


@dataclass
class Sampler:
    """The sink's RSS and its /metrics, every `every` seconds, on a thread."""

    pid: int
    metrics_url: str
    every: float
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def read(self) -> dict[str, float]:
        status = proc_status(f"/proc/{self.pid}/status")
        figures: dict[str, float] = {
            name: status[name] * 1024.0 for name in ("VmRSS", "RssAnon", "RssFile") if name in status
        }
        text = httpx.get(self.metrics_url, timeout=30).text
        for name, labels, value in _SAMPLE.findall(text):
            if name == "cosnap_sink_rows_inserted_total" and 'table="events"' in labels:
                figures["rows"] = float(value)
            elif name.startswith("cosnap_sink_store_"):  # summed over the tables
                kind = [v for k, v in _LABEL.findall(labels) if k != "table"]
                key = f"{name.removeprefix('cosnap_sink_store_')}:{kind[0] if kind else ''}"
                figures[key] = figures.get(key, 0.0) + float(value)
        return figures

    def run(self) -> None:
        began = time.monotonic()
        while not self._stop.wait(max(0.0, began + len(self.samples) * self.every - time.monotonic())):
            at = time.monotonic()
            try:
                figures = self.read()
            except (httpx.HTTPError, OSError) as exc:
                print(f"  sample failed: {exc!r}", flush=True)
                continue
            self.samples.append(Sample(at, figures))
            print(
                f"  {(at - began) / 60:5.1f} min  rows {figures.get('rows', 0):>12,.0f}  "
                f"RSS {figures.get('VmRSS', 0) / MIB:6.1f} MiB (anon {figures.get('RssAnon', 0) / MIB:.1f}, "
                f"file {figures.get('RssFile', 0) / MIB:.1f})  chDB tracked "
                f"{figures.get('memory_bytes:MemoryTracking', 0) / MIB:.1f}, jemalloc resident "
                f"{figures.get('allocator_bytes:resident', 0) / MIB:.1f}, parts "
                f"{figures.get('parts:active', 0):.0f} (outdated {figures.get('parts:outdated', 0):.0f}), "
                "primary index "
                f"{figures.get('part_bytes:primary_index', 0) / MIB:.2f}, marks "
                f"{figures.get('part_bytes:marks', 0) / MIB:.2f}, mark cache "
                f"{figures.get('memory_bytes:MarkCacheBytes', 0) / MIB:.1f}, condition cache "
                f"{figures.get('memory_bytes:QueryConditionCacheBytes', 0) / MIB:.1f} MiB; "
                f"load {os.getloadavg()[0]:.1f}",
                flush=True,
            )

    def stop(self) -> None:
        self._stop.set()


@dataclass(frozen=True)
class Figure:
    name: str
    trend: Trend  # MiB (or a count for counts)
    per_million_rows: float  # slope against the rows stored, same unit per 1,000,000 rows


def figure(samples: list[Sample], name: str, after: float, unit: float = MIB) -> Figure:
    """The trend of figure `name` in `unit`s (MiB, or 1 for a count) after `after`."""
    kept = [s for s in samples if s.at >= after and name in s.figures and "rows" in s.figures]
    values = [s.figures[name] / unit for s in kept]
    rows = [s.figures["rows"] for s in kept]
    series = [(s.at, round(value * 1024)) for s, value in zip(kept, values, strict=True)]  # trend() reads kB
    per_rows = (
        statistics.linear_regression(rows, values).slope * 1e6
        if len(kept) >= 2 and rows[-1] > rows[0]
        else math.nan
    )
    return Figure(name, trend(series, after), per_rows)


DERIVED = {
    # RSS less what the store holds for the rows it stores (bounded by the data)
    "RSS less primary index and marks": ("VmRSS", ("part_bytes:primary_index", "part_bytes:marks")),
    # anonymous memory chDB's allocator does not account for: Python's heap and other mallocs
    "anon less jemalloc resident": ("RssAnon", ("allocator_bytes:resident",)),
}


def derive(samples: list[Sample]) -> None:
    for sample in samples:
        for name, (base, minus) in DERIVED.items():
            if base in sample.figures and all(m in sample.figures for m in minus):
                sample.figures[name] = sample.figures[base] - sum(sample.figures[m] for m in minus)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=int, default=7500, help="events/s")
    parser.add_argument("--minutes", type=float, default=30, help="minutes of load")
    parser.add_argument(
        "--warmup",
        type=float,
        default=WARMUP_S,
        help="seconds left out of the trends (default: why WARMUP_S)",
    )
    parser.add_argument("--sample", type=float, default=10, help="seconds between samples")
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="for the sink's environment"
    )
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)

    with bench_kafka("sink-soak") as bench:
        projects = choose_projects(PROJECTS)
        bench.progress.note(f"building {POOL_SECONDS} s of events at {args.rate:,}/s")
        pool, pool_start = build_pool(args.rate, projects)
        services = Services(bench, ("sink",), env=env)
        bench.progress.note("starting the sink")
        services.start()
        sink = services.processes["sink"]
        sampler = Sampler(sink.pid, f"{services.query_url}/metrics", args.sample)
        windows = Windows()
        stop = threading.Event()
        aggregates = threading.Thread(
            target=produce, args=(bench.bootstrap, bench.topics.aggregates, iter(windows.out.get, None))
        )
        print(
            f"sink soak: {args.rate:,} events/s for {args.minutes:g} min, envelopes of "
            f"{EVENTS_PER_ENVELOPE} ({len(pool)} in the pool), windows of the worker's code; sink env "
            f"{env or 'as make run'}; samples every {args.sample:g} s",
            flush=True,
        )
        threads = [threading.Thread(target=sampler.run, name="sampler"), aggregates]
        for thread in threads:
            thread.start()
        began = time.monotonic()
        try:
            written = produce(
                bench.bootstrap,
                bench.topics.events,
                windows.fold(paced(pool, pool_start, args.minutes * 60, stop)),
            )
            ended = time.monotonic()
            time.sleep(2 * args.sample)  # the last rows land
        finally:
            stop.set()
            windows.close()
            sampler.stop()
            for thread in threads:
                thread.join()
            alive = sink.poll() is None
            services.stop()
        if not alive:
            raise SystemExit(f"the sink exited:\n{services.tail('sink')}")
        events = written.records * EVENTS_PER_ENVELOPE
        return report(args, sampler.samples, began, ended, events, windows)


def report(
    args: argparse.Namespace,
    samples: list[Sample],
    began: float,
    ended: float,
    events: int,
    windows: Windows,
) -> int:
    derive(samples)
    load = [s for s in samples if s.at <= ended]
    after = began + args.warmup
    stored = samples[-1].figures.get("rows", 0) if samples else 0
    print(
        f"\nwritten {events:,} events ({events / (ended - began):,.0f}/s) and {windows.records:,} windows; "
        f"the sink inserted {stored:,.0f} event rows; the trend from {args.warmup:.0f} s to the load's end"
    )
    print(
        f"\n| figure | start | end | slope / 10 min | its floor's (lowest of {FLOOR_S:.0f} s) | "
        "slope / million rows |"
    )
    print("|---|---|---|---|---|---|")
    names = [
        "VmRSS",
        "RssAnon",
        "RssFile",
        *DERIVED,
        "allocator_bytes:resident",
        "memory_bytes:MemoryTracking",
    ]
    names += sorted(
        n for n in load[-1].figures if n.startswith(("memory_bytes:", "part_bytes:")) and n not in names
    )
    for name in names:
        found = figure(load, name, after)
        t = found.trend
        print(
            f"| {name} MiB | {t.start_mib:.1f} | {t.end_mib:.1f} | {t.slope_mib_per_10min:+.2f} | "
            f"{t.floor_slope_mib_per_10min:+.2f} | {found.per_million_rows:+.2f} |"
        )
    parts = figure(load, "parts:active", after, 1)
    outdated = figure(load, "parts:outdated", after, 1)
    rows = figure(load, "rows", after, 1)
    for label, found in (("active parts", parts), ("outdated parts", outdated)):
        t = found.trend
        print(f"| {label} | {t.start_mib:.0f} | {t.end_mib:.0f} | {t.slope_mib_per_10min:+.1f} | "
              f"{t.floor_slope_mib_per_10min:+.1f} | |")  # fmt: skip
    per_row = [
        (s.figures["part_bytes:primary_index"] + s.figures["part_bytes:marks"]) / s.figures["rows:"]
        for s in load[-1:]
        if s.figures.get("rows:")
    ]
    rss = figure(load, "VmRSS", after).trend
    judged = figure(load, "RSS less primary index and marks", after).trend
    kept_up = stored >= 0.99 * events
    print(
        f"\nrows stored {rows.trend.end_mib:,.0f}; primary index and marks in memory "
        f"{per_row[0] if per_row else math.nan:.4f} bytes per row stored"
    )
    print(
        f"RSS {rss.start_mib:.0f} -> {rss.end_mib:.0f} MiB, slope {rss.slope_mib_per_10min:+.2f} MiB "
        "/ 10 min, "
        f"its floor's {rss.floor_slope_mib_per_10min:+.2f}; less the data's primary index and marks, the "
        f"floor's slope {judged.floor_slope_mib_per_10min:+.2f} (bound {judged.bound_mib_per_10min:.1f}): "
        f"{'flat' if judged.flat else 'NOT flat'}; the sink kept up: {kept_up}"
    )
    print(f"measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores")
    return 0 if judged.flat and kept_up else 1


if __name__ == "__main__":
    sys.exit(main())
