"""The highest rate the whole pipeline holds with fresh data, on one machine.

    python -m bench.pipeline [--rates 5000,10000,15000,20000,25000,30000] [--hold 300]
                             [--soak-minutes 30] [--soak-rate R]

Starts a real Apache Kafka broker and the pipeline as `make run` starts it (the sink on embedded
chDB with its query service, the streams worker, the ingest API), all on this machine with the
load generator. For each rate, in rising order, until one is not held:

- bench/loadgen posts 100-event batches of demo traffic (bench/alerts' background body: the
  server stamps ids and times, so each copy is fresh events) open-loop at the rate for `--hold`
  seconds; beside it a probe event with an id of its own is posted every half second, and the
  lag of the sink's and the worker's consumer groups on the events topic is read every 2 s;
- afterwards, from `metrics.events` (through the sink's query service): each probe's
  `inserted_at` (set by ClickHouse as the row is inserted) against the moment its 202 arrived,
  and, for every event received during the hold, `inserted_at - received_at` (received_at is
  stamped before the 202, so this is an upper bound of 202 -> queryable);
- how long after its probe's 202 each probe's alert (the probe rule of bench/alerts, added to
  the default rules) arrived on the alerts topic, and how long after its end each minute window
  the worker wrote during the hold was written (final: the bar allows lateness + grace, 30 s,
  plus 5 s);
- how long the sink's and the worker's lag take to drain to zero once the load stops;
- the CPU each process used over the hold (the sink, the worker, the ingest, the broker, the
  load generator), from /proc.

A rate is held when the load generator kept it (>= 98 %, every answer 202), the p99 of both
freshness figures is <= 5 s, every probe is in the table and fired its alert with p99 <= 2 s,
the minute windows were final within 35 s of their end at p99, and no backlog was left when the load
ended (no growing lag): the sink's lag is 0 within 5 s of the end, the worker's within 10 s (it
commits offsets with its checkpoints, every 5 s). Each rate is held `--hold` seconds, the issue's
5 minutes by default.

With `--soak-minutes M` the holds are followed by a soak: M minutes of the same load at
`--soak-rate` (by default half the highest rate this run held; `--rates=` skips the holds),
checked as a hold is (the rate must be held), while the RSS (VmRSS) of every process (the sink,
the worker, the ingest, the broker, the load generator and this one) is sampled every 10 s and
printed every 30 s. For each process, over the samples from the end of a 10-minute warm-up (why:
WARMUP_S) to the load's end: RSS at the start, at the end, its maximum, and the slope of the
least-squares line in MiB per 10 minutes, of the samples and of their floor (each sample's lowest
of the last minute: why, FLOOR_S).
Flat: the floor's slope grows by at most 5 MiB or 1 % of the starting RSS per 10 minutes,
whichever is larger (why: FLAT_MIB_PER_10MIN). Each process's CPU over the soak is reported as
over a hold.

The broker is a JVM, whose RSS grows whenever G1 commits more of its heap (up to -Xmx) and never
gives it back: a step of RSS is no leak. What a leak grows is the heap still live after a full
collection. So from the warm-up's end, every LIVE_HEAP_EVERY_S and at the load's end, the soak has
the broker collect (`jcmd <pid> GC.run`, a pause of a fraction of a second) and reads the heap
that is left and the heap committed (`jcmd <pid> GC.heap_info`); the broker is flat when the live
heap's slope is within the same bound (its RSS trend is printed too).

Exit status 1 when no rate is held, or when the soak is not held or not flat.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import resource
import statistics
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import yaml

from bench.alerts.__main__ import BATCH, PROBE_RULE, background_body
from bench.ingest.__main__ import build_loadgen, load
from bench.kafka import Bench, Offsets, bench_kafka
from bench.services import Services
from bench.streams import AggregateReader
from bench.streams.memory import RssSampler
from schemas.rules import DEFAULT_RULES
from schemas.settings import RunnerSettings, StreamsSettings
from schemas.topics import EVENT_PARTITIONS
from tests.conftest import AlertListener

FRESH_P99_S = 5.0
ALERT_P99_S = 2.0
# A minute window is final once the watermark (newest event time - lateness) passes its end plus
# the grace: under steady traffic that many seconds after its end. Bar: within 5 s of that.
FINAL_AFTER_S = StreamsSettings().window_lateness_s + StreamsSettings().window_grace_s
FINAL_SLACK_S = 5.0
DRAIN_S = 5.0
CHECKPOINT_S = 5.0  # the worker commits its offsets with its checkpoints, at most this often
PROBES_PER_QUERY = 1000  # probe ids per read of metrics.events (42 characters each)
# The soak: RSS of every process every SAMPLE_S; the first WARMUP_S are left out of its trend.
# Ten minutes: the sink's RSS rises for about that long before it levels (chDB keeps each part a
# merge replaced for `old_parts_lifetime`, 480 s, and the sink's C heap reaches its working size
# within minutes; BENCHMARKS.md, "Sink soak").
SAMPLE_S = 10.0
PRINT_S = 30.0
WARMUP_S = 600.0
# The floor of RSS: its lowest value over the last FLOOR_S. A merge in chDB holds up to ~150 MiB
# more for seconds (and its allocator keeps the freed pages ~5 s before it returns them), so a
# sample that falls in one is high without anything kept; a leak lifts the floor as much as any
# sample, while a minute of samples always has one between merges.
FLOOR_S = 60.0
# Flat: the least-squares slope of the RSS floor after the warm-up grows by at most the larger of
# these per 10 minutes. Between merges and collections RSS moves by a few MiB without any leak
# (Python's arenas, the JVM's heap between collections), so over a 30-minute soak a smaller slope
# is noise; yet a process that kept a single byte per event would exceed the bound (at 10,000
# events/s, one byte an event is 5.7 MiB per 10 minutes).
FLAT_MIB_PER_10MIN = 5.0
FLAT_SHARE_PER_10MIN = 0.01
LIVE_HEAP_EVERY_S = 300.0
INSTRUMENTS = ("loadgen", "bench")  # processes of the benchmark, not of the pipeline


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_now(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds of each process, of this one (probes, lag reads) and of its finished children
    (the load generator)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {name: cpu_seconds(pid) for name, pid in pids.items()} | {
        "loadgen": children.ru_utime + children.ru_stime,
        "bench": own.ru_utime + own.ru_stime,
    }


def service_pids(bench: Bench, services: Services) -> dict[str, int]:
    return {name: process.pid for name, process in services.processes.items()} | {"kafka": bench.broker_pid}


def child_pid(command: str) -> int | None:
    """The pid of this process's child running `command` (its /proc comm), if one is running."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            comm, rest = stat.read_text().rsplit(")", 1)
        except OSError:
            continue  # ended meanwhile
        if comm.split("(", 1)[1] == command and int(rest.split()[1]) == os.getpid():
            return int(stat.parent.name)
    return None


def jvm_heap(pid: int) -> tuple[int, int] | None:
    """(committed, used) heap of a JVM in kB, from `jcmd <pid> GC.heap_info` (G1's first line:
    `garbage-first heap   total 262144K, used 123456K [...]`); None when it does not answer."""
    try:
        info = subprocess.run(
            ["jcmd", str(pid), "GC.heap_info"],  # noqa: S607  # the JDK's, beside the broker's java
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return heap_info(info)


def heap_info(text: str) -> tuple[int, int] | None:
    """(committed, used) kB from the text of `jcmd <pid> GC.heap_info`."""
    found = re.search(r"heap\s+total (\d+)K, used (\d+)K", text)
    return (int(found[1]), int(found[2])) if found else None


def jvm_live_heap(pid: int) -> tuple[float, int, int] | None:
    """(monotonic time, committed kB, live kB): the heap of a JVM right after a full collection
    it was asked for (`jcmd <pid> GC.run`, System.gc(): a full collection with G1)."""
    try:
        subprocess.run(["jcmd", str(pid), "GC.run"], capture_output=True, timeout=60, check=True)  # noqa: S607
    except (OSError, subprocess.SubprocessError):
        return None
    heap = jvm_heap(pid)
    return (time.monotonic(), *heap) if heap else None


class JstatSampler:
    """A JVM's heap, committed and used, every `every_s`: one `jstat -gc <pid> <ms>` for the whole
    soak (a jcmd a sample would start a JVM each time), read on a thread."""

    def __init__(self, pid: int, every_s: float) -> None:
        self.samples: list[tuple[float, int, int]] = []  # (monotonic time, committed kB, used kB)
        self._jstat = subprocess.Popen(
            ["jstat", "-gc", str(pid), str(int(every_s * 1000))],  # noqa: S607  # the JDK's, as jcmd
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self._thread = threading.Thread(target=self._run, name="jstat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self._jstat.stdout is not None
        header: list[str] = []
        for line in self._jstat.stdout:
            if line.split()[:1] == ["S0C"]:
                header = line.split()
            elif header and (heap := jstat_heap(header, line.split())):
                self.samples.append((time.monotonic(), *heap))

    def close(self) -> None:
        self._jstat.terminate()
        self._jstat.wait(10)
        self._thread.join(2)


def jstat_heap(header: list[str], values: list[str]) -> tuple[int, int] | None:
    """(committed, used) kB of a line of `jstat -gc`: survivors, eden and old generation."""
    if len(values) != len(header):
        return None
    row = dict(zip(header, values, strict=True))
    try:
        committed = sum(float(row[c]) for c in ("S0C", "S1C", "EC", "OC"))
        used = sum(float(row[c]) for c in ("S0U", "S1U", "EU", "OU"))
    except (KeyError, ValueError):
        return None
    return round(committed), round(used)


@dataclass(frozen=True)
class Trend:
    """A process's RSS over a soak after its warm-up (MiB)."""

    start_mib: float
    end_mib: float
    max_mib: float
    slope_mib_per_10min: float  # of the least-squares line; nan with fewer than two samples
    floor_slope_mib_per_10min: float  # the same of the floor (FLOOR_S)

    @property
    def bound_mib_per_10min(self) -> float:
        return max(FLAT_MIB_PER_10MIN, FLAT_SHARE_PER_10MIN * self.start_mib)

    @property
    def flat(self) -> bool:
        """The floor grows by at most the bound (shrinking is flat too); never with too few
        samples."""
        return self.floor_slope_mib_per_10min <= self.bound_mib_per_10min


def floor(samples: list[tuple[float, int]], window_s: float = FLOOR_S) -> list[tuple[float, int]]:
    """Each (time, value) sample's value replaced by the lowest of the last `window_s`."""
    return [(at, min(v for t, v in samples if at - window_s <= t <= at)) for at, _ in samples]


def _slope(kept: list[tuple[float, float]]) -> float:
    """Of the least-squares line, per 10 minutes."""
    if len(kept) < 2:
        return float("nan")
    return statistics.linear_regression([at for at, _ in kept], [v for _, v in kept]).slope * 600


def trend(
    samples: list[tuple[float, int]], after: float, until: float = math.inf, floor_s: float = FLOOR_S
) -> Trend:
    """The trend of (monotonic time s, kB) samples taken from `after` to `until`."""
    kept = [(at, kb / 1024) for at, kb in samples if after <= at <= until]
    if not kept:
        return Trend(*[float("nan")] * 5)
    floors = [(at, kb / 1024) for at, kb in floor(samples, floor_s) if after <= at <= until]
    mib = [value for _, value in kept]
    return Trend(mib[0], mib[-1], max(mib), _slope(kept), _slope(floors))


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else float("nan")


@dataclass
class Lag:
    """The consumer groups' lag (records) on the events topic, sampled every 2 s on a thread."""

    offsets: dict[str, Offsets]
    samples: dict[str, list[int]] = field(default_factory=dict)
    _running: bool = True

    def lag(self, name: str) -> int:
        offsets = self.offsets[name]
        ends, committed = offsets.ends(), offsets.committed()
        return sum(ends[p] - committed[p] for p in ends)

    def run(self) -> None:
        while self._running:
            for name in self.offsets:
                self.samples.setdefault(name, []).append(self.lag(name))
            time.sleep(2)

    def stop(self) -> None:
        self._running = False


@dataclass(frozen=True)
class Step:
    rate: int
    achieved: float
    non_202: int
    answers: dict[str, int]
    post_p99_ms: float
    probes: int
    probes_found: int
    probe_p50_s: float
    probe_p99_s: float
    events: int
    event_p50_s: float
    event_p99_s: float
    max_lag: dict[str, int]
    cpu: dict[str, float]  # cores used over the hold, per process
    alerts_found: int  # probes whose alert fired
    alert_p50_s: float
    alert_p99_s: float
    minute_windows: int  # written during the hold
    final_p50_s: float  # seconds after their end
    final_p99_s: float
    drained_s: dict[str, float]  # after the load's end, until the group's lag was 0 (60: never)
    load_5min: float  # the machine's load average over the last 5 minutes at the load's end

    @property
    def held(self) -> bool:
        return (
            self.achieved >= 0.98 * self.rate
            and self.non_202 == 0
            and self.probes_found == self.probes
            and self.probe_p99_s <= FRESH_P99_S
            and self.event_p99_s <= FRESH_P99_S
            and self.alerts_found == self.probes
            and self.alert_p99_s <= ALERT_P99_S
            # None is final within a first short hold: the first windows close ~30 s after the
            # first minute boundary.
            and (self.minute_windows == 0 or self.final_p99_s <= FINAL_AFTER_S + FINAL_SLACK_S)
            and self.drained_s.get("sink", 60) <= DRAIN_S
            and self.drained_s.get("worker", 60) <= DRAIN_S + CHECKPOINT_S
        )


def probe_loop(ingest: str, key: str, stop: threading.Event, posted: dict[str, float]) -> None:
    """A probe event every half second; `posted` maps its id to the moment its 202 arrived. Each
    fires its own group of the probe rule (bench/alerts: any `bench.probe` event, by `probe`)."""
    with httpx.Client(base_url=ingest, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        while not stop.is_set():
            event_id = f"probe-{uuid.uuid4().hex}"
            body = {
                "event_id": event_id,
                "type": "feature",
                "feature": "bench.probe",
                "action": "x",
                "tags": {"probe": event_id},
            }
            response = client.post("/v1/events", json=body)
            if response.status_code == 202:
                posted[event_id] = time.time()
            stop.wait(0.5)


def run_step(
    bench: Bench,
    services: Services,
    loadgen: Path,
    rate: int,
    hold: int,
    windows: AggregateReader,
    alerts: AlertListener,
) -> Step:
    lag = Lag(
        {
            "sink": Offsets(
                bench.bootstrap, bench.topics.events, EVENT_PARTITIONS, f"{bench.topics.internal}sink"
            ),
            "worker": Offsets(
                bench.bootstrap, bench.topics.events, EVENT_PARTITIONS, f"{bench.topics.internal}streams"
            ),
        }
    )
    posted: dict[str, float] = {}
    stop = threading.Event()
    threads = [
        threading.Thread(target=probe_loop, args=(services.ingest_url, services.write_key, stop, posted)),
        threading.Thread(target=lag.run),
    ]
    pids = service_pids(bench, services)
    cpu_before = cpu_now(pids)
    began = time.time()
    for thread in threads:
        thread.start()
    try:
        done = load(
            loadgen,
            f"{services.ingest_url}/v1/events",
            services.write_key,
            bench.work / "body.json",
            hold,
            64,
            rate / BATCH,
        )
    finally:
        stop.set()
        lag.stop()
        for thread in threads:
            thread.join()
    ended = time.time()
    load_5min = os.getloadavg()[1]
    cpu_after = cpu_now(pids)
    cpu = {name: (cpu_after[name] - cpu_before[name]) / (ended - began) for name in cpu_after}
    drained: dict[str, float] = {}
    drain_began = time.monotonic()
    while len(drained) < len(lag.offsets) and time.monotonic() - drain_began < 60:
        for name in lag.offsets:
            if name not in drained and lag.lag(name) == 0:
                drained[name] = time.monotonic() - drain_began
        time.sleep(0.1)
    for offsets in lag.offsets.values():
        offsets.close()
    time.sleep(2)  # the probes' rows are in (the sink committed after inserting them)

    # In chunks: a soak's probes would not fit in one query's text (at most 100,000 characters).
    posted_ids = list(posted)
    found: dict[str, float] = {}
    for chunk in range(0, len(posted_ids), PROBES_PER_QUERY):
        ids = ", ".join(f"'{event_id}'" for event_id in posted_ids[chunk : chunk + PROBES_PER_QUERY])
        for row in services.query(
            "SELECT event_id, toUnixTimestamp64Milli(min(inserted_at)) FROM metrics.events "  # noqa: S608
            f"WHERE event_id IN ({ids}) GROUP BY event_id"
        ):
            found[row[0]] = float(row[1]) / 1000
    probe = [found[event_id] - at for event_id, at in posted.items() if event_id in found]
    fired = {
        record["labels"]["probe"]: at
        for at, record in list(alerts.records)
        if record["rule"] == PROBE_RULE["name"] and record["state"] == "firing"
    }
    alerted = [fired[event_id] - at for event_id, at in posted.items() if event_id in fired]
    # The minute windows the worker wrote during the hold, each this long after its end.
    final = [late for written, late in list(windows.tally.minute_closed) if began <= written <= ended]
    # Every event received during the hold: from its received_at (before its 202) to its insert.
    [[count, fresh]] = services.query(
        "SELECT count(), quantiles(0.5, 0.99)(toUnixTimestamp64Milli(inserted_at) - "  # noqa: S608
        "toUnixTimestamp64Milli(received_at)) FROM metrics.events "
        f"WHERE received_at >= fromUnixTimestamp64Milli({int(began * 1000)}) "
        f"AND received_at < fromUnixTimestamp64Milli({int(ended * 1000)})"
    )
    return Step(
        rate=rate,
        achieved=done.requests_per_s * BATCH,
        non_202=done.non_202,
        answers=done.answers,
        post_p99_ms=done.p99_ms,
        probes=len(posted),
        probes_found=len(probe),
        probe_p50_s=statistics.median(probe) if probe else float("nan"),
        probe_p99_s=p99(probe),
        events=int(count),
        event_p50_s=fresh[0] / 1000,
        event_p99_s=fresh[1] / 1000,
        max_lag={name: max(samples, default=0) for name, samples in lag.samples.items()},
        cpu=cpu,
        alerts_found=len(alerted),
        alert_p50_s=statistics.median(alerted) if alerted else float("nan"),
        alert_p99_s=p99(alerted),
        minute_windows=len(final),
        final_p50_s=statistics.median(final) if final else float("nan"),
        final_p99_s=p99(final),
        drained_s={name: drained.get(name, 60.0) for name in lag.offsets},
        load_5min=load_5min,
    )


@dataclass(frozen=True)
class Soak:
    step: Step
    trends: dict[str, Trend]  # RSS, per process
    broker_heap: list[tuple[float, int, int]]  # (minute of the soak, committed kB, live kB), jvm_live_heap
    broker_live: Trend  # of the live heap
    broker_committed: list[tuple[float, int, int]]  # (minute of the soak, committed kB, used kB), jstat

    @property
    def flat(self) -> bool:
        """The pipeline's processes: their RSS, the broker's live heap in place of its RSS. The
        load generator and this benchmark (which keeps every probe for its report) are shown, not
        judged."""
        return self.broker_live.flat and all(
            t.flat for name, t in self.trends.items() if name not in ("kafka", *INSTRUMENTS)
        )


def run_soak(
    bench: Bench,
    services: Services,
    loadgen: Path,
    rate: int,
    minutes: int,
    windows: AggregateReader,
    alerts: AlertListener,
) -> Soak:
    """`minutes` of load at `rate`, checked as a hold is, while every process's RSS is sampled
    every SAMPLE_S (and printed as it is taken), and the broker's live heap from the end of the
    warm-up every LIVE_HEAP_EVERY_S; each one's trend after WARMUP_S."""
    samplers = {name: RssSampler(pid, SAMPLE_S) for name, pid in service_pids(bench, services).items()}
    samplers["bench"] = RssSampler(os.getpid(), SAMPLE_S)
    heap: list[tuple[float, int, int]] = []
    jstat = JstatSampler(bench.broker_pid, SAMPLE_S)
    began = time.monotonic()
    until = began + minutes * 60  # the load's end: not the drain and the final reads of run_step
    stop = threading.Event()

    def watch() -> None:
        printed = began
        # From the warm-up's end every LIVE_HEAP_EVERY_S, and 5 s before the load's end.
        collections = [began + WARMUP_S + k * LIVE_HEAP_EVERY_S for k in range(minutes)]
        collections = [at for at in collections if at < until - 5] + [until - 5]
        while not stop.wait(1):
            if collections and time.monotonic() >= collections[0]:
                collections.pop(0)
                if live := jvm_live_heap(bench.broker_pid):
                    heap.append(live)
                    print(
                        f"soak {(live[0] - began) / 60:4.1f} min: broker heap after a full collection "
                        f"{live[2] / 1024:.0f} MiB of {live[1] / 1024:.0f} MiB committed",
                        flush=True,
                    )
            if "loadgen" not in samplers and (pid := child_pid("loadgen")) is not None:
                samplers["loadgen"] = RssSampler(pid, SAMPLE_S)
            if time.monotonic() - printed >= PRINT_S:
                printed = time.monotonic()
                latest = ", ".join(
                    f"{name} {sampler.samples[-1][1] / 1024:.0f}"
                    for name, sampler in list(samplers.items())
                    if sampler.samples
                )
                print(
                    f"soak {(printed - began) / 60:4.1f} min: RSS MiB {latest}; "
                    f"load average {os.getloadavg()[0]:.1f}",
                    flush=True,
                )

    watcher = threading.Thread(target=watch, name="soak-rss")
    watcher.start()
    try:
        step = run_step(bench, services, loadgen, rate, minutes * 60, windows, alerts)
    finally:
        stop.set()
        watcher.join()
        for sampler in samplers.values():
            sampler.close()
        jstat.close()
    trends = {
        name: trend(list(sampler.samples), began + WARMUP_S, until) for name, sampler in samplers.items()
    }
    # Each point its own floor (one sample a collection): window 0.
    live = trend([(at, kb) for at, _, kb in heap], began + WARMUP_S - 1, until, floor_s=0)
    collected = [((at - began) / 60, kb, kept) for at, kb, kept in heap]
    committed = [((at - began) / 60, kb, used) for at, kb, used in jstat.samples if at <= until]
    return Soak(step, trends, collected, live, committed)


def describe(step: Step) -> str:
    return (
        f"{step.rate:>7,} ev/s: achieved {step.achieved:,.0f} (answers {step.answers}, post p99 "
        f"{step.post_p99_ms:.0f} ms); probes {step.probes_found}/{step.probes} 202 -> queryable "
        f"p50 {step.probe_p50_s:.2f} s p99 {step.probe_p99_s:.2f} s; {step.events:,} events "
        f"received -> queryable p50 {step.event_p50_s:.2f} s p99 {step.event_p99_s:.2f} s; "
        f"max lag (records) {step.max_lag}; lag 0 after the load's end in "
        f"{', '.join(f'{k} {v:.1f} s' for k, v in step.drained_s.items())}; "
        f"alerts {step.alerts_found}/{step.probes} 202 -> firing p50 {step.alert_p50_s:.2f} s "
        f"p99 {step.alert_p99_s:.2f} s; {step.minute_windows:,} minute windows final "
        f"p50 {step.final_p50_s:.1f} s p99 {step.final_p99_s:.1f} s after their end; "
        f"cores used: {', '.join(f'{k} {v:.2f}' for k, v in step.cpu.items())}; "
        f"machine's 5-minute load average {step.load_5min:.1f}; {'held' if step.held else 'NOT held'}"
    )


def print_tables(steps: list[Step]) -> None:
    print(
        "\n| rate ev/s | achieved | 202 -> queryable p50 / p99 (probes) | received -> queryable p50 / p99 "
        "(all events) | alert 202 -> firing p50 / p99 | minute windows final after their end p50 / p99 | "
        "max lag sink / worker (records) | lag 0 after the load, sink / worker | load (5 min) | held |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for s in steps:
        print(
            f"| {s.rate:,} | {s.achieved:,.0f} | {s.probe_p50_s:.2f} / {s.probe_p99_s:.2f} s | "
            f"{s.event_p50_s:.2f} / {s.event_p99_s:.2f} s | {s.alert_p50_s:.2f} / {s.alert_p99_s:.2f} s | "
            f"{s.final_p50_s:.1f} / {s.final_p99_s:.1f} s | {s.max_lag.get('sink', 0)} / "
            f"{s.max_lag.get('worker', 0)} | {s.drained_s['sink']:.1f} / {s.drained_s['worker']:.1f} s | "
            f"{s.load_5min:.1f} | {'yes' if s.held else 'no'} |"
        )
    names = list(steps[0].cpu)
    print(f"\n| rate ev/s | cores used: {' | '.join(names)} |")
    print(f"|---|{'---|' * len(names)}")
    for s in steps:
        print(f"| {s.rate:,} | {' | '.join(f'{s.cpu[name]:.2f}' for name in names)} |")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rates", default="5000,10000,15000,20000,25000,30000", help="events/s, rising; empty: none"
    )
    parser.add_argument("--hold", type=int, default=300, help="seconds of load at each rate")
    parser.add_argument("--soak-minutes", type=int, default=0, help="then a soak this long (0: none)")
    parser.add_argument("--soak-rate", type=int, default=0, help="events/s (0: half the highest held)")
    args = parser.parse_args()
    rates = [int(rate) for rate in args.rates.split(",") if rate]
    loadgen = build_loadgen(RunnerSettings().kafka_cache_dir.parent / "loadgen")

    steps: list[Step] = []
    soak: Soak | None = None
    with bench_kafka("pipeline") as bench:
        background_body(bench.work / "body.json")
        rules = yaml.safe_load(DEFAULT_RULES.read_text())
        rules["rules"].append(PROBE_RULE)
        (bench.work / "rules.yaml").write_text(yaml.safe_dump(rules))
        services = Services(bench, env={"COSNAP_RULES_FILE": str(bench.work / "rules.yaml")})
        windows = AggregateReader(bench, ignore_from="9999")
        alerts = AlertListener(bench.bootstrap, bench.topics.alerts)
        try:
            bench.progress.note("starting the sink (chDB), the streams worker and the ingest API")
            services.start()
            for rate in rates:
                bench.progress.note(f"{rate:,} events/s for {args.hold} s")
                step = run_step(bench, services, loadgen, rate, args.hold, windows, alerts)
                steps.append(step)
                print(describe(step), flush=True)
                if dead := services.dead():
                    raise SystemExit(f"{', '.join(dead)} exited:\n{services.tail(dead[0])}")
                if not step.held:
                    break
            soak_rate = args.soak_rate or max((s.rate for s in steps if s.held), default=0) // 2
            if args.soak_minutes and soak_rate:
                bench.progress.note(f"soak: {soak_rate:,} events/s for {args.soak_minutes} min")
                soak = run_soak(bench, services, loadgen, soak_rate, args.soak_minutes, windows, alerts)
                print(f"soak {describe(soak.step)}", flush=True)
                if dead := services.dead():
                    raise SystemExit(f"{', '.join(dead)} exited:\n{services.tail(dead[0])}")
        finally:
            services.stop()
            windows.close()
            alerts.close()

    held = [step.rate for step in steps if step.held]
    if steps:
        print(f"\nhighest rate held for {args.hold} s: {max(held, default=0):,} events/s")
        print_tables(steps)
    if soak is not None:
        step = soak.step
        print(
            f"\nsoak: {step.rate:,} events/s for {args.soak_minutes} min, "
            f"{'held' if step.held else 'NOT held'}; RSS after a {WARMUP_S:.0f} s warm-up, sampled "
            f"every {SAMPLE_S:.0f} s; flat: the least-squares slope of its floor (the lowest of the last "
            f"{FLOOR_S:.0f} s) grows at most "
            f"max({FLAT_MIB_PER_10MIN:.0f} MiB, {FLAT_SHARE_PER_10MIN:.0%} of the starting RSS) per 10 min"
        )
        print_tables([step])
        print(
            "\n| process | RSS start MiB | end MiB | max MiB | slope MiB / 10 min | floor's slope | bound "
            "| flat |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for name, t in soak.trends.items():
            judged = "(the broker: by its live heap)" if name == "kafka" else ""
            judged = judged or ("(not judged)" if name in INSTRUMENTS else "")
            print(
                f"| {name} | {t.start_mib:.0f} | {t.end_mib:.0f} | {t.max_mib:.0f} | "
                f"{t.slope_mib_per_10min:+.1f} | {t.floor_slope_mib_per_10min:+.1f} | "
                f"{t.bound_mib_per_10min:.1f} | {'yes' if t.flat else 'no'} {judged} |"
            )
        live = soak.broker_live
        print("\n| broker's heap after a full collection, at min | live MiB | committed MiB |")
        print("|---|---|---|")
        for minute, committed, kept in soak.broker_heap:
            print(f"| {minute:.1f} | {kept / 1024:.0f} | {committed / 1024:.0f} |")
        print(
            f"\nbroker's live heap: slope {live.slope_mib_per_10min:+.1f} MiB / 10 min, bound "
            f"{live.bound_mib_per_10min:.1f}: {'flat' if live.flat else 'NOT flat'}"
        )
        print("\nbroker's heap committed (jstat, every 10 s), at each change: minute, committed, used MiB")
        shown = None
        for minute, kb, used in soak.broker_committed:
            if kb != shown:
                print(f"  {minute:5.1f} min: {kb / 1024:.0f} committed, {used / 1024:.0f} used")
                shown = kb
    print(f"\nmeasured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores")
    holds_ok = not rates or bool(held)
    soak_ok = not args.soak_minutes or (soak is not None and soak.step.held and soak.flat)
    return 0 if holds_ok and soak_ok else 1


if __name__ == "__main__":
    sys.exit(main())
