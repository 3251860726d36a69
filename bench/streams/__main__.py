"""Streams worker throughput against a raw aiokafka loop on the same topic, in one run.

    python -m bench.streams [--events 400000] [--rounds 5]

Starts a real Apache Kafka broker and builds Cosnap traffic in envelopes of 500 events written
as the ingest writes them (six projects on six partitions, ten minutes of event time ending
three minutes ago), then one closer envelope per project two hours later so that every window
of the data closes. Each round writes them to a topic set of its own (events, aggregates,
checkpoints, consumer group: no round sees another's state) and runs, one after the other on
that topic:

- the raw loop: aiokafka from the beginning, `orjson.loads` each record, fold each event into a
  dict keyed by (project, type, name, minute) with count and sum; timed from the first record
  received to the last event folded. It runs before and after the worker; the mean of the two
  is the round's baseline (the machine is shared and drifts).
- the worker (`cosnap-metrics streams`): timed from its first record (its earliest `owns events
  partition` log line, logged once the partitions' state is restored: Faust's start, the group
  join and the reads of checkpoints and published alerts are not counted) to the moment it
  wrote (the record's Kafka CreateTime) the last of the minute windows whose counts add up to
  every event. This process reads them back to count them; how late its own reader thread gets
  to them is printed, not counted.

The result is the median of the rounds' ratios (single runs on a shared machine differ widely:
BENCHMARKS.md), printed with every absolute figure. Bar (BENCHMARKS.md): worker >= 0.5 x the raw loop;
exit status 1 below it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.kafka import Bench, bench_kafka
from bench.streams import AggregateReader, Worker, end_offsets
from bench.streams.feed import (
    EVENTS_PER_ENVELOPE,
    Envelope,
    choose_projects,
    closers,
    cosnap_mix,
    pack,
    produce,
)
from cosnap_metrics.provision import ensure_topics
from schemas.topics import EVENT_PARTITIONS, Topics

BAR = 0.5
PROJECTS = 6


@dataclass(frozen=True)
class Timed:
    events: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.events / self.seconds


async def raw_loop(bootstrap: str, topic: str) -> tuple[Timed, int]:
    """Consume the whole topic, decode and fold every event; (timing, distinct keys folded)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(EVENT_PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        remaining = sum((await consumer.end_offsets(partitions)).values())
        folded: dict[tuple[str, str, str, str], list[Any]] = {}
        events = 0
        first = 0.0
        while remaining:
            batches = await consumer.getmany(timeout_ms=1000)
            if batches and not first:
                first = time.perf_counter()
            for records in batches.values():
                remaining -= len(records)
                for record in records:
                    envelope = orjson.loads(record.value)
                    project = envelope["project"]
                    for event in envelope["events"]:
                        kind = event["type"]
                        if kind == "performance":
                            name, value = event["metric"], event["value"]
                        elif kind == "feature":
                            name, value = event["feature"], 1
                        elif kind == "conversion":
                            name, value = f"{event['funnel']}:{event['step']}", 1
                        else:
                            name, value = event["name"], float(event["amount"])
                        key = (project, kind, name, event["timestamp"][:16])
                        acc = folded.get(key)
                        if acc is None:
                            folded[key] = [1, value]
                        else:
                            acc[0] += 1
                            acc[1] += value
                        events += 1
        return Timed(events, time.perf_counter() - first), len(folded)
    finally:
        await consumer.stop()


def minute_iso(ts: datetime) -> str:
    return ts.replace(second=0, microsecond=0).isoformat().replace("+00:00", "Z")


def run_worker(
    bench: Bench, data_events: int, ignore_from: str, timeout: float, profile: Path | None
) -> Timed:
    reader = AggregateReader(bench, ignore_from)
    worker = Worker(bench)
    spawned = time.time()
    profiler = None
    if profile is not None:
        py_spy = shutil.which("py-spy")
        if py_spy is None:
            raise SystemExit("--py-spy needs py-spy on PATH")
        argv = [py_spy, "record", "-p", str(worker.pid), "-r", "250", "-f", "raw", "-o", str(profile)]
        profiler = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tally = reader.tally
    progress = bench.progress
    try:
        deadline = time.monotonic() + timeout
        while tally.minute_events < data_events:
            if not worker.alive():
                raise SystemExit(f"the worker exited with {worker.process.returncode}:\n{worker.tail()}")
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"after {timeout:.0f} s the minute windows hold {tally.minute_events} of "
                    f"{data_events} events:\n{worker.tail()}"
                )
            progress.update(
                f"worker: minute windows out hold {tally.minute_events:,} of {data_events:,} events",
                tally.minute_events / data_events,
            )
            time.sleep(0.02)
        progress.finish(f"worker: minute windows out hold all {data_events:,} events")
        done = tally.last_minute_written
        owned = worker.first_records()
        assert owned, "the worker logged no `owns events partition` line"
        started = min(owned.values())
        emitted = datetime.fromisoformat(tally.newest_emitted_at).timestamp()
        time.sleep(1)  # windows beyond the count would be duplicates
        print(
            f"    worker: first record {started - spawned:.1f} s after spawn (not counted); partitions "
            f"{sorted(owned)} taken up (state restored) over {max(owned.values()) - started:.2f} s "
            f"(counted); last minute window closed {done - emitted:.2f} s before the worker wrote it "
            f"(counted), read here {tally.last_minute_at - done:.2f} s after that (not counted)"
        )
        print(
            f"    windows emitted: {dict(sorted(tally.records.items()))}, {len(tally.minute_series)} "
            f"series; minute counts add up to {tally.minute_events:,} (data: {data_events:,}); "
            f"{tally.overflow_windows} windows with __overflow__"
        )
        return Timed(data_events, done - started)
    finally:
        worker.stop()
        reader.close()
        if profiler is not None:
            profiler.wait(30)  # py-spy writes its file when the worker has exited


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=400_000, help="data events (closers not included)")
    parser.add_argument("--timeout", type=float, default=240, help="longest wait for the worker's windows")
    parser.add_argument("--rounds", type=int, default=5, help="worker runs, each between two raw runs")
    parser.add_argument(
        "--py-spy", type=Path, metavar="FILE", help="record the worker of round 1 with py-spy (raw stacks)"
    )
    args = parser.parse_args()

    with bench_kafka("streams") as bench:
        projects = choose_projects(PROJECTS)
        end = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=3)
        start = end - timedelta(minutes=10)
        closer_at = end + timedelta(hours=2)
        began = time.perf_counter()
        bench.progress.note(f"building {args.events:,} events in envelopes as the ingest writes them")
        data = list(pack(cosnap_mix(args.events, projects, start, end - start)))
        size = sum(len(value) for _, value in data)
        print(
            f"streams benchmark: {args.events:,} events in {len(data):,} envelopes of up to "
            f"{EVENTS_PER_ENVELOPE} ({size / len(data) / 1024:.0f} KiB each before lz4), "
            f"{len(projects)} projects, event time {start:%H:%M}-{end:%H:%M} UTC, {len(projects)} "
            f"closers at {closer_at:%H:%M}; built in {time.perf_counter() - began:.0f} s; "
            f"{args.rounds} rounds",
            flush=True,
        )
        envelopes = data + closers(projects, closer_at)
        rounds = [
            run_round(bench, n, envelopes, args.events, minute_iso(closer_at), args)
            for n in range(1, args.rounds + 1)
        ]

        ratio = statistics.median(r.ratio for r in rounds)
        raw = statistics.median(t.per_second for r in rounds for t in r.raws)
        worker = statistics.median(r.worker.per_second for r in rounds)
        late = sum(r.late for r in rounds)
        print(f"  median of {len(rounds)} rounds: ratio {ratio:.3f} (rounds: "
              f"{', '.join(f'{r.ratio:.3f}' for r in rounds)})   bar >= {BAR}; "
              f"late records (events read after their window closed): {late}")  # fmt: skip

        print("\n| events | raw aiokafka loop ev/s | streams worker ev/s | ratio (median; rounds) |")
        print("|---|---|---|---|")
        print(f"| {args.events:,} in envelopes of {EVENTS_PER_ENVELOPE} | {raw:,.0f} | {worker:,.0f} | "
              f"{ratio:.2f} ({', '.join(f'{r.ratio:.2f}' for r in rounds)}) |")  # fmt: skip
        print(f"\nmeasured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores")
        return 0 if ratio >= BAR else 1


@dataclass(frozen=True)
class Round:
    raws: tuple[Timed, Timed]
    worker: Timed
    late: int

    @property
    def ratio(self) -> float:
        """The worker against the mean of the raw runs just before and just after it."""
        return self.worker.per_second / statistics.mean(raw.per_second for raw in self.raws)


def run_round(
    bench: Bench,
    n: int,
    envelopes: list[Envelope],
    data_events: int,
    ignore_from: str,
    args: argparse.Namespace,
) -> Round:
    """Raw loop, worker, raw loop on topics of the round's own (a fresh prefix)."""
    topics = Topics(f"{bench.topics.prefix}r{n}.")
    ensure_topics(bench.bootstrap, topics)
    (bench.work / f"round-{n}").mkdir()
    here = dataclasses.replace(bench, topics=topics, work=bench.work / f"round-{n}")
    bench.progress.note(f"round {n}: writing the envelopes to {topics.events}")
    written = produce(bench.bootstrap, topics.events, envelopes)
    print(f"round {n}: envelopes per partition {dict(sorted(written.partitions.items()))}", flush=True)
    bench.progress.note(f"round {n}: raw aiokafka loop")
    before, keys = asyncio.run(raw_loop(bench.bootstrap, topics.events))
    print(f"  raw aiokafka loop     {before.per_second:9,.0f} ev/s  ({before.events:,} events, "
          f"{keys:,} keys, {before.seconds:.2f} s)", flush=True)  # fmt: skip
    bench.progress.note(f"round {n}: streams worker (cosnap-metrics streams)")
    profile = args.py_spy if n == 1 else None
    worker = run_worker(here, data_events, ignore_from, args.timeout, profile)
    print(f"  streams worker        {worker.per_second:9,.0f} ev/s  ({worker.events:,} events, "
          f"{worker.seconds:.2f} s from first record to last minute window)", flush=True)  # fmt: skip
    bench.progress.note(f"round {n}: raw aiokafka loop")
    after, _ = asyncio.run(raw_loop(bench.bootstrap, topics.events))
    print(f"  raw aiokafka loop     {after.per_second:9,.0f} ev/s  ({after.events:,} events, "
          f"{after.seconds:.2f} s)", flush=True)  # fmt: skip
    late = sum(end_offsets(bench.bootstrap, topics.late, 6).values())
    done = Round((before, after), worker, late)
    print(f"  round {n} ratio: {done.ratio:.3f}", flush=True)
    return done


if __name__ == "__main__":
    sys.exit(main())
