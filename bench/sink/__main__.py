"""The sink's rows/s from Kafka into chDB against a raw chDB insert of the same rows, in one run.

    python -m bench.sink [--events 400000] [--rounds 5] [--batch 50000]

Starts a real Apache Kafka broker and builds Cosnap traffic in envelopes of 500 events written
as the ingest writes them (bench/streams/feed.py: six projects on six partitions). Each round
writes them to a topic set of its own and runs, in an order that alternates between rounds:

- the sink: `cosnap-metrics sink` as `make run` starts it (embedded chDB in a fresh data
  directory, its query service beside it, the default batch of 50,000 rows or 500 ms), consuming
  the round's events topic from the beginning. It commits a partition's offset only once every
  row before it is inserted, so this process reads the group's committed offsets every 50 ms and
  times the rows committed from its first commit to its last: the process's start, chDB's
  opening, the migrations, the group join and the first batch are not counted, the insert of
  every later batch and everything between (fetching, decompressing, building the rows, the
  commit) is. Afterwards `count()` of `metrics.events` must be every event.
- the raw insert (bench/sink/raw.py, a process of its own with a fresh chDB): the same rows (the
  sink's own JSON rows, with the records' partitions and offsets) turned into Python values
  beforehand and inserted with clickhouse-connect's `insert` into the same table layout, in
  batches of `--batch`, timed from the second batch on (the first, like the sink's, is a
  warm-up). The same process also times `raw_insert` of the JSON lines (JSONEachRow), printed.

A round's ratio is the sink's rows/s over the raw insert's; the result is the median of the
rounds, printed with the absolute figures. Bar (BENCHMARKS.md): >= 0.7; exit status 1 below it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from bench.kafka import Bench, Offsets, bench_kafka
from bench.services import Services
from bench.streams.feed import EVENTS_PER_ENVELOPE, Envelope, choose_projects, cosnap_mix, pack, produce
from cosnap_metrics.provision import ensure_topics
from schemas.topics import EVENT_PARTITIONS, Topics
from sinks.clickhouse.rows import event_rows

BAR = 0.7
PROJECTS = 6


@dataclass(frozen=True)
class Placed:
    """Where the envelopes land: per partition, the events of each record in offset order."""

    events: dict[int, list[int]]

    @classmethod
    def of(cls, envelopes: list[Envelope], partitions: int = EVENT_PARTITIONS) -> Placed:
        """As librdkafka's default partitioner places records keyed by project (CRC32 of the
        key), each partition's records in the order written."""
        events: dict[int, list[int]] = {p: [] for p in range(partitions)}
        for project, value in envelopes:
            count = len(orjson.loads(value)["events"])
            events[zlib.crc32(project.encode()) % partitions].append(count)
        return cls(events)

    def rows(self, envelopes: list[Envelope], partitions: int = EVENT_PARTITIONS) -> list[bytes]:
        """The sink's rows of every envelope, stamped with its record's partition and offset."""
        next_offset = dict.fromkeys(range(partitions), 0)
        out: list[bytes] = []
        for project, value in envelopes:
            partition = zlib.crc32(project.encode()) % partitions
            out += event_rows(value, partition, next_offset[partition])
            next_offset[partition] += 1
        return out

    def events_before(self, offsets: dict[int, int]) -> int:
        """The events of the records before these offsets (a group's committed offsets)."""
        return sum(sum(self.events[p][:offset]) for p, offset in offsets.items())

    @property
    def total(self) -> int:
        return sum(sum(counts) for counts in self.events.values())


@dataclass(frozen=True)
class Timed:
    rows: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.rows / self.seconds


def run_sink(bench: Bench, placed: Placed, timeout: float, profile: Path | None) -> Timed:
    """`cosnap-metrics sink` on the round's topics, timed from the moment its group is seen to
    hold the events partitions to its commit of the last record, both seen every 20-50 ms."""
    services = Services(bench, ("sink",))
    group = f"{bench.topics.internal}sink"
    offsets = Offsets(bench.bootstrap, bench.topics.events, EVENT_PARTITIONS, group)
    profiler = None
    try:
        services.start(wait=False)
        if profile is not None:
            py_spy = shutil.which("py-spy")
            if py_spy is None:
                raise SystemExit("--py-spy needs py-spy on PATH")
            pid = str(services.processes["sink"].pid)
            argv = [py_spy, "record", "-p", pid, "-r", "250", "-f", "raw", "-o", str(profile)]
            profiler = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not offsets.assigned():
            if services.dead() or time.monotonic() > deadline:
                raise SystemExit(f"the sink did not join its group:\n{services.tail('sink')}")
            time.sleep(0.02)
        assigned = time.perf_counter()
        commits: list[int] = []
        while (done := placed.events_before(offsets.committed())) < placed.total:
            if done and (not commits or commits[-1] != done):
                commits.append(done)
            if services.dead() or time.monotonic() > deadline:
                raise SystemExit(
                    f"the sink committed {done:,} of {placed.total:,} events:\n{services.tail('sink')}"
                )
            bench.progress.update(f"sink: {done:,} of {placed.total:,} events committed", done / placed.total)
            time.sleep(0.05)
        commits.append(done)
        timed = Timed(placed.total, time.perf_counter() - assigned)
        services.wait_ready()
        stored = int(services.query("SELECT count() FROM metrics.events")[0][0])
        print(
            f"  sink                  {timed.per_second:9,.0f} rows/s  ({timed.rows:,} rows in "
            f"{timed.seconds:.2f} s from its partitions' assignment to its last commit; events "
            f"committed as seen every 50 ms: {', '.join(f'{c:,}' for c in commits)}; metrics.events "
            f"holds {stored:,})",
            flush=True,
        )
        if stored != placed.total:
            raise SystemExit(f"metrics.events holds {stored:,} rows, not {placed.total:,}")
        return timed
    finally:
        services.stop()
        offsets.close()
        if profiler is not None:
            profiler.wait(30)  # py-spy writes its file when the sink has exited


def run_raw(bench: Bench, rows: Path, batch: int) -> tuple[Timed, Timed]:
    """bench/sink/raw.py in a process of its own: (clickhouse-connect `insert`, JSONEachRow)."""
    data = bench.work / "raw-chdb"
    done = subprocess.run(
        [sys.executable, "-m", "bench.sink.raw", str(rows), str(data), "--batch", str(batch)],
        capture_output=True,
        check=False,
    )
    shutil.rmtree(data, ignore_errors=True)
    if done.returncode != 0:
        raise SystemExit(f"bench.sink.raw exited with {done.returncode}:\n{done.stderr.decode()[-3000:]}")
    result = orjson.loads(done.stdout.splitlines()[-1])
    insert = Timed(result["rows"], sum(result["insert"]))
    json_lines = Timed(result["rows"], sum(result["json"]))
    print(
        f"  raw insert            {insert.per_second:9,.0f} rows/s  ({insert.rows:,} rows in "
        f"{insert.seconds:.2f} s, batches of {batch:,}; JSONEachRow of the same lines "
        f"{json_lines.per_second:,.0f} rows/s)",
        flush=True,
    )
    return insert, json_lines


@dataclass(frozen=True)
class Round:
    sink: Timed
    raw: Timed
    json_lines: Timed

    @property
    def ratio(self) -> float:
        return self.sink.per_second / self.raw.per_second


def run_round(
    bench: Bench, n: int, envelopes: list[Envelope], placed: Placed, rows: Path, args: argparse.Namespace
) -> Round:
    topics = Topics(f"{bench.topics.prefix}r{n}.")
    ensure_topics(bench.bootstrap, topics)
    (bench.work / f"round-{n}").mkdir()
    here = dataclasses.replace(bench, topics=topics, work=bench.work / f"round-{n}")
    bench.progress.note(f"round {n}: writing the envelopes to {topics.events}")
    written = produce(bench.bootstrap, topics.events, envelopes)
    expected = {p: len(counts) for p, counts in placed.events.items() if counts}
    assert dict(written.partitions) == expected, f"records landed as {written.partitions}, not {expected}"
    print(f"round {n}:", flush=True)
    sink_first = n % 2 == 1
    raw: tuple[Timed, Timed] | None = None
    if not sink_first:
        bench.progress.note(f"round {n}: raw insert")
        raw = run_raw(here, rows, args.batch)
    bench.progress.note(f"round {n}: cosnap-metrics sink")
    sink = run_sink(here, placed, args.timeout, args.py_spy if n == 1 else None)
    if raw is None:
        bench.progress.note(f"round {n}: raw insert")
        raw = run_raw(here, rows, args.batch)
    done = Round(sink, *raw)
    print(f"  round {n} ratio: {done.ratio:.3f}", flush=True)
    return done


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=400_000)
    parser.add_argument("--rounds", type=int, default=5, help="rounds of sink and raw insert, alternated")
    parser.add_argument("--batch", type=int, default=50_000, help="raw insert batch (the sink's default)")
    parser.add_argument("--timeout", type=float, default=300, help="longest wait for the sink")
    parser.add_argument(
        "--py-spy", type=Path, metavar="FILE", help="record the sink of round 1 with py-spy (raw stacks)"
    )
    args = parser.parse_args()

    with bench_kafka("sink") as bench:
        projects = choose_projects(PROJECTS)
        end = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=3)
        began = time.perf_counter()
        bench.progress.note(f"building {args.events:,} events in envelopes as the ingest writes them")
        envelopes = list(
            pack(cosnap_mix(args.events, projects, end - timedelta(minutes=10), timedelta(minutes=10)))
        )
        placed = Placed.of(envelopes)
        rows = bench.work / "rows.ndjson"
        rows.write_bytes(b"\n".join(placed.rows(envelopes)))
        print(
            f"sink benchmark: {placed.total:,} events in {len(envelopes):,} envelopes of up to "
            f"{EVENTS_PER_ENVELOPE}, {len(projects)} projects; rows as the sink builds them "
            f"{rows.stat().st_size / placed.total:.0f} B each; built in {time.perf_counter() - began:.0f} s; "
            f"{args.rounds} rounds",
            flush=True,
        )
        rounds = [run_round(bench, n, envelopes, placed, rows, args) for n in range(1, args.rounds + 1)]

    ratio = statistics.median(r.ratio for r in rounds)
    sink = statistics.median(r.sink.per_second for r in rounds)
    raw = statistics.median(r.raw.per_second for r in rounds)
    json_lines = statistics.median(r.json_lines.per_second for r in rounds)
    listed = ", ".join(f"{r.ratio:.2f}" for r in rounds)
    print(f"  median of {len(rounds)} rounds: ratio {ratio:.3f} (rounds: {listed})   bar >= {BAR}")
    print("\n| events | raw insert rows/s | JSONEachRow rows/s | sink rows/s | ratio (median; rounds) |")
    print("|---|---|---|---|---|")
    print(f"| {placed.total:,} | {raw:,.0f} | {json_lines:,.0f} | {sink:,.0f} | {ratio:.2f} ({listed}) |")
    print(f"\nmeasured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores")
    return 0 if ratio >= BAR else 1


if __name__ == "__main__":
    sys.exit(main())
