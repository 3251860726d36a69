"""The streams worker against Quix Streams and a naive Faust agent doing the same windowed
aggregation on the same input topic and broker, in one run.

    python -m bench.peers [--events 200000] [--rounds 3]

Starts a real Apache Kafka broker and builds the traffic of `python -m bench.streams` (Cosnap's
mix in envelopes of 500 events written as the ingest writes them, six projects on six
partitions, ten minutes of event time ending three minutes ago, then one closer event per
project two hours later). Each round writes it to a topic set of its own, which the three read
from the beginning, one after the other (the order rotates between rounds), each with a fresh
consumer group, state and output topic:

- the worker (`cosnap-metrics streams`, as `python -m bench.streams` runs it): 10 s, 1 min and
  1 h windows of every series with exact sums, sketches and quantiles, seven alert rules,
  deduplication by event id, checkpoints; timed from its first record (its partitions' state
  restored) to the moment it wrote the last minute window holding every event;
- Quix Streams (bench/peers/quix_app.py, newest release in a virtualenv of its own, created
  here under ~/.cache/cosnap-metrics/peers/): per series (project, type, name) 1-minute tumbling
  windows of count, sum, min and max on event time, final windows to a topic; timed from its
  first record to the moment it wrote the last window holding every event;
- a naive Faust agent (bench/peers/faust_app.py, the project's faust-streaming): the same per
  series, one event at a time into a tumbling Table; Faust closes windows by the wall clock
  and loses some of them (BENCHMARKS.md, Peers), so it is timed from its first record to the
  moment it had folded every event, and what it wrote is reported beside.

Windows are read back (keys `series|1m|<start>` in every output) and their counts added up. A
round's ratio is the worker's events/s over the best peer's; the result is the median of the
rounds, printed with every absolute figure. Goal (BENCHMARKS.md): the worker >= 3 x the best
peer; exit status 1 below it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from bench.kafka import Bench, bench_kafka
from bench.streams import AggregateReader
from bench.streams.__main__ import Timed, minute_iso, run_worker
from bench.streams.feed import (
    EVENTS_PER_ENVELOPE,
    Envelope,
    choose_projects,
    closers,
    cosnap_mix,
    pack,
    produce,
)
from cosnap_metrics.processes import spawn, stop
from cosnap_metrics.provision import ensure_topics
from schemas.settings import RunnerSettings
from schemas.topics import EVENT_PARTITIONS, Topics

GOAL = 3.0
PROJECTS = 6
QUIX_VERSION = "3.28.1"
REPO = Path(__file__).resolve().parents[2]
PEERS = ("worker", "quix", "faust")


def quix_python(cache: Path) -> Path:
    """The Python of a virtualenv holding Quix Streams QUIX_VERSION (and only what it needs),
    created in `cache` the first time."""
    venv = cache / f"quixstreams-{QUIX_VERSION}"
    python = venv / "bin" / "python"
    installed = venv / ".installed"
    if not installed.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, f"quixstreams=={QUIX_VERSION}"], check=True)
        installed.touch()
    return python


@dataclass(frozen=True)
class Output:
    """What a peer wrote: its minute windows of the data, and how many events they hold."""

    windows: int
    series: int
    events: int

    def describe(self, expected: int) -> str:
        held = "all" if self.events == expected else f"{self.events / expected:.1%} of the"
        return f"{self.windows:,} minute windows of {self.series:,} series holding {held} {expected:,} events"


def wait_output(
    reader: AggregateReader, process: subprocess.Popen[bytes], events: int, timeout: float, settle: float
) -> None:
    """Until the windows read hold `events` events, or have not grown for `settle` seconds
    once some arrived, or `timeout` passes."""
    tally = reader.tally
    deadline = time.monotonic() + timeout
    seen, changed = -1, time.monotonic()
    while tally.minute_events < events and time.monotonic() < deadline:
        if tally.minute_events != seen:
            seen, changed = tally.minute_events, time.monotonic()
        elif seen > 0 and time.monotonic() - changed > settle:
            return
        if process.poll() is not None:
            raise SystemExit(f"the peer exited with {process.returncode}")
        time.sleep(0.02)


def tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def output_of(reader: AggregateReader) -> Output:
    time.sleep(1)  # windows beyond the count would be duplicates
    tally = reader.tally
    return Output(tally.records["1m"], len(tally.minute_series), tally.minute_events)


def run_quix(
    bench: Bench, python: Path, events: int, ignore_from: str, timeout: float
) -> tuple[Timed, Output]:
    sink = f"{bench.topics.prefix}peers.quix"
    reader = AggregateReader(bench, ignore_from, topic=sink)
    log = bench.work / "quix.log"
    argv = [str(python), "-m", "bench.peers.quix_app", bench.bootstrap, bench.topics.events, sink]
    argv += [f"{bench.topics.prefix}quix", str(bench.work / "quix-state")]
    with log.open("wb") as out:
        process = spawn(argv, cwd=REPO, stdout=out)
    try:
        wait_output(reader, process, events, timeout, settle=15)
        first = next(
            orjson.loads(line)["first_record"]
            for line in log.read_bytes().splitlines()
            if line.startswith(b'{"first_record"')
        )
        output = output_of(reader)
        return Timed(events, reader.tally.last_minute_written - first), output
    finally:
        stop(process, 20)
        reader.close()


def run_faust(bench: Bench, events: int, ignore_from: str, timeout: float) -> tuple[Timed, Output]:
    sink = f"{bench.topics.prefix}peers.faust"
    reader = AggregateReader(bench, ignore_from, topic=sink)
    marks = bench.work / "faust-marks.jsonl"
    marks.touch()
    env = os.environ | {
        "BENCH_BOOTSTRAP": bench.bootstrap,
        "BENCH_SOURCE": bench.topics.events,
        "BENCH_SINK": sink,
        "BENCH_GROUP": f"{bench.topics.prefix}faust",
        "BENCH_DATA": str(bench.work / "faust-data"),
        "BENCH_MARKS": str(marks),
        "BENCH_EVENTS": str(events),
    }
    argv = [sys.executable, "-m", "bench.peers.faust_app", "worker", "-l", "warn"]
    with (bench.work / "faust.log").open("wb") as out:
        process = spawn(argv, cwd=REPO, env=env, stdout=out)
    try:
        deadline = time.monotonic() + timeout
        found: dict[str, float] = {}
        while "folded" not in found:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(
                    f"the Faust agent did not fold {events:,} events (exit status {process.poll()}, "
                    f"{timeout:.0f} s):\n{tail(bench.work / 'faust.log')}"
                )
            time.sleep(0.05)
            for line in marks.read_bytes().splitlines():
                found |= orjson.loads(line)
        wait_output(reader, process, events, 30, settle=10)
        return Timed(events, found["folded"] - found["first_record"]), output_of(reader)
    finally:
        stop(process, 20)
        reader.close()


@dataclass(frozen=True)
class Round:
    timed: dict[str, Timed]
    outputs: dict[str, Output]

    @property
    def best_peer(self) -> str:
        return max(("quix", "faust"), key=lambda peer: self.timed[peer].per_second)

    @property
    def ratio(self) -> float:
        return self.timed["worker"].per_second / self.timed[self.best_peer].per_second


def run_round(
    bench: Bench,
    n: int,
    envelopes: list[Envelope],
    events: int,
    ignore_from: str,
    python: Path,
    args: argparse.Namespace,
) -> Round:
    topics = Topics(f"{bench.topics.prefix}r{n}.")
    ensure_topics(bench.bootstrap, topics)
    outputs = [f"{topics.prefix}peers.{peer}" for peer in ("quix", "faust")]
    admin = AdminClient({"bootstrap.servers": bench.bootstrap})
    for future in admin.create_topics([NewTopic(t, EVENT_PARTITIONS, 1) for t in outputs]).values():
        future.result(30)
    (bench.work / f"round-{n}").mkdir()
    here = dataclasses.replace(bench, topics=topics, work=bench.work / f"round-{n}")
    produce(bench.bootstrap, topics.events, envelopes)
    print(f"round {n}:", flush=True)
    order = PEERS[(n - 1) % 3 :] + PEERS[: (n - 1) % 3]
    timed: dict[str, Timed] = {}
    outputs_of: dict[str, Output] = {}
    for peer in order:
        bench.progress.note(f"round {n}: {peer}")
        if peer == "worker":
            timed[peer] = run_worker(here, events, ignore_from, args.timeout, None)
            reader_output = None
        elif peer == "quix":
            timed[peer], reader_output = run_quix(here, python, events, ignore_from, args.timeout)
        else:
            timed[peer], reader_output = run_faust(here, events, ignore_from, args.timeout)
        if reader_output is not None:
            outputs_of[peer] = reader_output
        what = (
            "from first record to the last minute window written"
            if peer != "faust"
            else "from first record to every event folded"
        )
        wrote = f"; wrote {reader_output.describe(events)}" if reader_output is not None else ""
        print(
            f"  {peer:8} {timed[peer].per_second:9,.0f} ev/s  ({timed[peer].seconds:.2f} s {what}{wrote})",
            flush=True,
        )
    done = Round(timed, outputs_of)
    print(f"  round {n}: worker / best peer ({done.best_peer}) = {done.ratio:.2f}", flush=True)
    return done


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000, help="data events (closers not included)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600, help="longest wait for one run")
    args = parser.parse_args()

    cache = RunnerSettings().kafka_cache_dir.parent / "peers"
    python = quix_python(cache)
    with bench_kafka("peers") as bench:
        projects = choose_projects(PROJECTS)
        end = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=3)
        start = end - timedelta(minutes=10)
        closer_at = end + timedelta(hours=2)
        bench.progress.note(f"building {args.events:,} events in envelopes as the ingest writes them")
        data = list(pack(cosnap_mix(args.events, projects, start, end - start)))
        print(
            f"peers benchmark: {args.events:,} events in {len(data):,} envelopes of up to "
            f"{EVENTS_PER_ENVELOPE}, {len(projects)} projects, event time {start:%H:%M}-{end:%H:%M} UTC, "
            f"closers at {closer_at:%H:%M}; Quix Streams {QUIX_VERSION} ({python}); {args.rounds} rounds",
            flush=True,
        )
        envelopes = data + closers(projects, closer_at)
        rounds = [
            run_round(bench, n, envelopes, args.events, minute_iso(closer_at), python, args)
            for n in range(1, args.rounds + 1)
        ]

    ratio = statistics.median(r.ratio for r in rounds)
    rates = {peer: statistics.median(r.timed[peer].per_second for r in rounds) for peer in PEERS}
    listed = ", ".join(f"{r.ratio:.2f}" for r in rounds)
    print(
        f"  median of {len(rounds)} rounds: worker / best peer {ratio:.2f} (rounds: {listed}); goal >= {GOAL}"
    )
    print(
        "\n| events | worker ev/s | Quix Streams ev/s | naive Faust ev/s (fold only) | worker / best peer |"
    )
    print("|---|---|---|---|---|")
    print(
        f"| {args.events:,} | {rates['worker']:,.0f} | {rates['quix']:,.0f} | {rates['faust']:,.0f} | "
        f"{ratio:.2f} ({listed}) |"
    )
    print(f"\nmeasured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores")
    return 0 if ratio >= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
