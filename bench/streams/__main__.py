"""Streams worker throughput against a raw aiokafka loop on the same topic, in one run.

    python -m bench.streams [--events 400000]

Starts a real Apache Kafka broker and fills the events topic with Cosnap traffic in envelopes of
500 events written as the ingest writes them (six projects on six partitions, ten minutes of
event time ending three minutes ago), then one closer envelope per project two hours later so
that every window of the data closes. Then, one after the other on that same topic:

- the raw loop: aiokafka from the beginning, `orjson.loads` each record, fold each event into a
  dict keyed by (project, type, name, minute) with count and sum; timed from the first record
  received to the last event folded. It runs before and after the worker; the mean is the
  baseline (the machine is shared and drifts).
- the worker (`cosnap-metrics streams`): timed from its first record (its earliest `owns events
  partition` log line, so Faust's start and the group join are not counted) to the moment this
  process has read minute windows on the aggregates topic whose counts add up to every event.

Bar (DESIGN §5): worker >= 0.5 x the raw loop; exit status 1 below it.
"""

from __future__ import annotations

import argparse
import asyncio
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
from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped]

from bench.kafka import Bench, bench_kafka
from bench.streams import AggregateReader, Worker, end_offsets
from bench.streams.feed import EVENTS_PER_ENVELOPE, choose_projects, closers, cosnap_mix, pack, produce
from schemas.topics import EVENT_PARTITIONS

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
    try:
        deadline = time.monotonic() + timeout
        shown = 0.0
        while tally.minute_events < data_events:
            if not worker.alive():
                raise SystemExit(f"the worker exited with {worker.process.returncode}:\n{worker.tail()}")
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"after {timeout:.0f} s the minute windows hold {tally.minute_events} of "
                    f"{data_events} events:\n{worker.tail()}"
                )
            if time.monotonic() - shown >= 5:
                shown = time.monotonic()
                print(f"    ... minute windows out hold {tally.minute_events:,} events", flush=True)
            time.sleep(0.02)
        done = tally.last_minute_at
        owned = worker.first_records()
        assert owned, "the worker logged no `owns events partition` line"
        started = min(owned.values())
        emitted = datetime.fromisoformat(tally.newest_emitted_at).timestamp()
        time.sleep(1)  # windows beyond the count would be duplicates
        print(
            f"    worker: first record {started - spawned:.1f} s after spawn (not counted); partitions "
            f"{sorted(owned)} taken up (checkpoint looked up) over {max(owned.values()) - started:.2f} s "
            "(counted); last minute window closed by the worker "
            f"{done - emitted:.2f} s before this process read it"
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
    parser.add_argument(
        "--py-spy", type=Path, metavar="FILE", help="record the worker with py-spy (raw stacks)"
    )
    args = parser.parse_args()

    with bench_kafka("streams") as bench:
        topic = bench.topics.events
        projects = choose_projects(PROJECTS)
        end = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=3)
        start = end - timedelta(minutes=10)
        closer_at = end + timedelta(hours=2)
        began = time.perf_counter()
        written = produce(bench.bootstrap, topic, pack(cosnap_mix(args.events, projects, start, end - start)))
        closing = produce(bench.bootstrap, topic, closers(projects, closer_at))
        print(
            f"streams benchmark: {args.events:,} events in {written.records:,} envelopes of up to "
            f"{EVENTS_PER_ENVELOPE} ({written.bytes / written.records / 1024:.0f} KiB each before lz4), "
            f"{len(projects)} projects, envelopes per partition {dict(sorted(written.partitions.items()))}, "
            f"event time {start:%H:%M}-{end:%H:%M} UTC, {closing.records} closers at {closer_at:%H:%M}; "
            f"built and written in {time.perf_counter() - began:.0f} s",
            flush=True,
        )

        raws: list[Timed] = []
        raw, keys = asyncio.run(raw_loop(bench.bootstrap, topic))
        raws.append(raw)
        print(f"  raw aiokafka loop #1  {raw.per_second:9,.0f} ev/s  ({raw.events:,} events, {keys:,} keys, "
              f"{raw.seconds:.2f} s)", flush=True)  # fmt: skip
        worker = run_worker(bench, args.events, minute_iso(closer_at), args.timeout, args.py_spy)
        print(f"  streams worker        {worker.per_second:9,.0f} ev/s  ({worker.events:,} events, "
              f"{worker.seconds:.2f} s from first record to last minute window)", flush=True)  # fmt: skip
        raw, _ = asyncio.run(raw_loop(bench.bootstrap, topic))
        raws.append(raw)
        print(f"  raw aiokafka loop #2  {raw.per_second:9,.0f} ev/s  ({raw.events:,} events, "
              f"{raw.seconds:.2f} s)", flush=True)  # fmt: skip
        late = sum(end_offsets(bench.bootstrap, bench.topics.dead_letter, 3).values())
        baseline = statistics.mean(r.per_second for r in raws)
        ratio = worker.per_second / baseline
        print(f"  ratio worker / raw loop (mean of both raw runs): {ratio:.3f}   bar >= {BAR}; "
              f"dead-letter records (late events): {late}")  # fmt: skip

        print("\n| events | raw aiokafka loop ev/s | streams worker ev/s | ratio |")
        print("|---|---|---|---|")
        print(f"| {args.events:,} in envelopes of {EVENTS_PER_ENVELOPE} | {baseline:,.0f} | "
              f"{worker.per_second:,.0f} | {ratio:.2f} |")  # fmt: skip
        print(f"\nmeasured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores")
        return 0 if ratio >= BAR else 1


if __name__ == "__main__":
    sys.exit(main())
