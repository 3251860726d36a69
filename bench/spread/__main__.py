"""One project's events folded by one, two and three streams workers.

    python -m bench.spread [--events 200000] [--rounds 1]

Builds the demo's Cosnap traffic of ONE project (ten minutes of event time ending three minutes
ago) with bench/streams/feed.py, as the ingest writes it: requests of 500 events, each split into
one envelope per series key (`COSNAP_EVENTS_KEY=series`: `project|type|name`), plus one closer per
partition two hours later so every window closes. Each configuration gets a topic set of its own
and is timed like bench/streams, its workers started (and their group settled) before the records
are written: from the first record a worker took (its earliest `owns events
partition` line) to the moment the last minute window holding the data was written.

Configurations: keyed by project with one worker (the project on one partition: what one
project got before), then keyed by series with 1, 2 and 3 workers in one consumer group.
Printed: events per second in all and per worker, and how the records spread over partitions.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

from bench.kafka import Bench, bench_kafka
from bench.streams import AggregateReader, Worker
from bench.streams.__main__ import minute_iso
from bench.streams.feed import Envelope, closers, cosnap_mix, pack, produce
from cosnap_metrics.broker import free_port
from cosnap_metrics.provision import ensure_topics
from schemas.topics import EVENT_PARTITIONS, Topics

PROJECT = "cosnap"
SETTLE_S = 10  # after the last worker is ready, for the group's last rebalance to end


def run(
    bench: Bench, name: str, envelopes: list[Envelope], data_events: int, workers: int, env: dict[str, str],
    ignore_from: str, timeout: float,
) -> float:  # fmt: skip
    """Write `envelopes` to a fresh topic set and fold them with `workers` workers; events/s."""
    topics = Topics(f"{bench.topics.prefix}{name}.")
    ensure_topics(bench.bootstrap, topics)
    here = dataclasses.replace(bench, topics=topics, work=bench.work / name)
    here.work.mkdir()
    reader = AggregateReader(here, ignore_from)
    started: list[Worker] = []
    try:
        # The workers join the group before the records are written: else the first one to join
        # folds them all before a rebalance hands the others their share.
        for n in range(workers):
            work = dataclasses.replace(here, work=here.work / f"worker-{n}")
            work.work.mkdir()
            started.append(Worker(work, COSNAP_STREAMS_METRICS_PORT=str(free_port()), **env))
        for worker in started:
            worker.wait_ready()
        time.sleep(SETTLE_S)
        written = produce(bench.bootstrap, topics.events, envelopes)
        print(f"{name}: records per partition {dict(sorted(written.partitions.items()))}", flush=True)
        deadline = time.monotonic() + timeout
        while reader.tally.minute_events < data_events:
            for worker in started:
                if not worker.alive():
                    raise SystemExit(f"a worker exited with {worker.process.returncode}:\n{worker.tail()}")
            if time.monotonic() > deadline:
                held = reader.tally.minute_events
                raise SystemExit(f"{name}: after {timeout:.0f} s the windows hold {held} events")
            time.sleep(0.05)
        owned = [worker.first_records() for worker in started]
        first = min(t for found in owned for t in found.values())
        seconds = reader.tally.last_minute_written - first
        rate = data_events / seconds
        partitions = [sorted(found) for found in owned]
        print(f"  {workers} worker(s), partitions {partitions}: {seconds:.2f} s, {rate:,.0f} ev/s, "
              f"{rate / workers:,.0f} ev/s per worker", flush=True)  # fmt: skip
        return rate
    finally:
        for worker in started:
            worker.stop()
        reader.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000, help="data events of the one project")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each configuration (median)")
    parser.add_argument("--timeout", type=float, default=300, help="longest wait for the windows")
    args = parser.parse_args()
    with bench_kafka("spread") as bench:
        end = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=3)
        start = end - timedelta(minutes=10)
        closer_at = end + timedelta(hours=2)
        mix = list(cosnap_mix(args.events, [PROJECT], start, end - start))
        by_project = list(pack([(p, t, dict(e)) for p, t, e in mix]))
        by_series = list(pack([(p, t, dict(e)) for p, t, e in mix], by_series=True))
        # A closer per partition: series keys of a closing feature that land on every partition.
        keys = [f"{PROJECT}|feature|bench.closer.{uuid.uuid4().hex[:8]}" for _ in range(8 * EVENT_PARTITIONS)]
        closing = [(key, value) for key in keys for _, value in closers([PROJECT], closer_at)]
        print(f"spread benchmark: {args.events:,} events of one project; {len(by_project):,} envelopes "
              f"keyed by project, {len(by_series):,} keyed by series", flush=True)  # fmt: skip
        configurations = [("project", 1), ("series", 1), ("series", 2), ("series", 3)]
        results: dict[tuple[str, int], list[float]] = {c: [] for c in configurations}
        for n in range(args.rounds):
            for key, workers in configurations:
                envelopes = (by_project if key == "project" else by_series) + (
                    closers([PROJECT], closer_at) if key == "project" else closing
                )
                env = {"COSNAP_EVENTS_KEY": key}
                name = f"r{n}{key}{workers}"
                ignore_from = minute_iso(closer_at)
                rate = run(bench, name, envelopes, args.events, workers, env, ignore_from, args.timeout)
                results[(key, workers)].append(rate)
        print("\n| envelopes keyed by | workers | events/s | events/s per worker |")
        print("|---|---|---|---|")
        for (key, workers), rates in results.items():
            rate = statistics.median(rates)
            print(f"| {key} | {workers} | {rate:,.0f} | {rate / workers:,.0f} |")
        print(f"\nmeasured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {args.rounds} round(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
