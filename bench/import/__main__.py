"""Backfill: a million events imported through the whole pipeline.

    python -m bench.import [--events 1000000] [--days 3] [--batch 500] [--concurrency 4]

Starts a real Apache Kafka broker and the pipeline's services as `make run` does (the sink on
embedded chDB, the streams worker, the ingest API; the ingest's per-key rate limit switched off
and its per-request log lines with it, as in bench/ingest), writes an NDJSON file of `--events`
events of the demo's mix (cosnap_metrics/demo.py: revenue, conversion, feature, performance)
stamped at random over the last `--days` days, so that every one is late for its windows, half of
them without `event_id` (the importer derives one), and then:

1. runs `cosnap-metrics import FILE` as a user would (the development write key of the data
   directory, the ingest URL from the environment) and times it: wall time of the command, from
   its start (the file's digest included) to its exit, every event acknowledged by the ingest
   (in Kafka, acks=all); the importer's own CPU time is printed beside it;
2. waits until `SELECT count() FROM metrics.events FINAL` is `--events`, and prints when;
3. runs the same import again, which must post nothing;
4. runs `cosnap-metrics reconcile` until it reports no mismatch and no window left to settle (the
   worker sends the late events to the sink, which writes them as correction rows, after the
   import) or `--reconcile-timeout` passes, and prints its last report.

Exit status 1 when the table does not hold exactly `--events` events, the import rejected any,
the second import posted something, or the windows do not equal the events.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import resource
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from bench.kafka import Bench, bench_kafka
from bench.services import Services
from cosnap_metrics.demo import CosnapTraffic


def write_events(path: Path, events: int, days: float, seed: int) -> int:
    """The file of events; returns its size in bytes."""
    rng = random.Random(seed)
    end = datetime.now(UTC) - timedelta(minutes=5)
    span = days * 86400
    traffic = CosnapTraffic(rng, clock=lambda: end - timedelta(seconds=rng.uniform(0, span)))
    with path.open("wb") as out:
        chunk: list[bytes] = []
        for i in range(events):
            event = traffic.event()
            if i % 2:
                del event["event_id"]
            chunk.append(orjson.dumps(event))
            if len(chunk) == 10_000:
                out.write(b"\n".join(chunk) + b"\n")
                chunk = []
        if chunk:
            out.write(b"\n".join(chunk) + b"\n")
    return path.stat().st_size


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--days", type=float, default=3.0, help="events stamped over the last DAYS")
    parser.add_argument("--batch", type=int, default=500, help="the importer's events per request")
    parser.add_argument("--concurrency", type=int, default=4, help="the importer's requests in flight")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--timeout", type=float, default=900, help="longest wait for metrics.events")
    parser.add_argument("--reconcile-timeout", type=float, default=300)
    args = parser.parse_args()
    with bench_kafka("import") as bench:
        services = Services(bench)
        try:
            return run(bench, services, args)
        finally:
            services.stop()


def run(bench: Bench, services: Services, args: argparse.Namespace) -> int:
    progress = bench.progress
    source = bench.work / "backfill.ndjson"
    progress.note(f"writing {args.events:,} events over the last {args.days:g} days to {source.name}")
    size = write_events(source, args.events, args.days, args.seed)
    progress.note("starting the sink (chDB), the streams worker and the ingest API")
    services.start()

    progress.note(f"cosnap-metrics import {source.name} ({size / 1e6:,.0f} MB)")
    cpu_before = children_cpu()
    started = time.monotonic()
    imported = services.cli(
        "import", "--json", "--batch", str(args.batch), "--concurrency", str(args.concurrency), str(source)
    )
    wall = time.monotonic() - started
    cpu = children_cpu() - cpu_before
    if imported.returncode not in (0, 1) or not imported.stdout.strip():
        raise SystemExit(f"import exited with {imported.returncode}:\n{imported.stderr[-3000:]}")
    summary = orjson.loads(imported.stdout.splitlines()[-1])
    print(
        f"import: {summary['accepted']:,} accepted, {summary['rejected']:,} rejected of {args.events:,} "
        f"events ({size / 1e6:,.0f} MB NDJSON, half without event_id) in {wall:.1f} s: "
        f"{args.events / wall:,.0f} events/s (wall time of the command; {summary['events_per_s']:,.0f}/s "
        f"by its own clock from the first line read); importer CPU {cpu:.1f} s; "
        f"{summary['retries']} requests sent again",
        flush=True,
    )

    deadline = time.monotonic() + args.timeout
    count = 0
    while (count := int(services.query("SELECT count() FROM metrics.events FINAL")[0][0])) < args.events:
        if dead := services.dead():
            raise SystemExit(f"{', '.join(dead)} exited:\n{services.tail(dead[0])}")
        if time.monotonic() > deadline:
            break
        progress.update(f"metrics.events FINAL holds {count:,} of {args.events:,}", count / args.events)
        time.sleep(1)
    landed = time.monotonic() - started
    progress.finish(f"metrics.events FINAL holds {count:,}")
    print(
        f"metrics.events FINAL: {count:,} rows, {landed:.1f} s after the import started "
        f"({landed - wall:.1f} s after it ended); end to end {count / landed:,.0f} events/s",
        flush=True,
    )

    started = time.monotonic()
    again = services.cli("import", "--json", str(source))
    repeat = orjson.loads(again.stdout.splitlines()[-1])
    print(
        f"the same import again: {repeat['posted']} posted, already imported: {repeat['already_imported']} "
        f"({time.monotonic() - started:.1f} s, the file's digest)",
        flush=True,
    )
    final = int(services.query("SELECT count() FROM metrics.events FINAL")[0][0])

    reconciled = reconcile(services, args.days, args.reconcile_timeout)
    print(f"\nmeasured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores", flush=True)
    ok = final == args.events and summary["rejected"] == 0 and repeat["posted"] == 0 and reconciled
    return 0 if ok else 1


def reconcile(services: Services, days: float, timeout: float) -> bool:
    """`cosnap-metrics reconcile` over the backfilled days, up to the hour under way, until it
    compares every window (it skips those whose events arrived within its settle time) and finds
    them equal, or time is up."""
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    # The hour under way is not final before it ends: every window that ended before it is.
    this_hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0).isoformat()
    while True:
        done = services.cli("reconcile", "--from", f"{days + 1:g}d", "--to", this_hour, timeout=timeout)
        skipped = re.search(r"([\d,]+) not final yet", done.stdout)
        settled = skipped is None or skipped.group(1) == "0"
        if (done.returncode == 0 and settled) or time.monotonic() > deadline:
            break
        time.sleep(10)
    lines = done.stdout.strip().splitlines() or done.stderr.strip().splitlines()[-6:]
    shown = "\n  ".join(lines[:3] + (["..."] if len(lines) > 6 else []) + lines[3:][-3:])
    waited = time.monotonic() - started
    print(
        f"reconcile (exit {done.returncode}, {waited:.0f} s after the count matched):\n  {shown}", flush=True
    )
    return done.returncode == 0 and settled


if __name__ == "__main__":
    sys.exit(main())
