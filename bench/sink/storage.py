"""What the sink's tables take on disk per row, for sizing a store (docs/reference.md, "ClickHouse
on a cluster").

    python -m bench.sink.storage [--events 1000000] [--rate 7550]

Builds `--events` of the demo's mix (bench/streams/feed.py: six projects, times evenly spread at
`--rate` events/s, as the ingest writes them), the sink's rows of them (sinks/clickhouse/rows.py,
each envelope at its partition and offset) and the windows the worker's `EventTimeWindows` closes
on them (its lateness, grace and series, the watermark driven by the envelopes' receive times),
inserts both into a fresh chDB with the sink's migrations and insert settings in batches of
50,000, merges each table's parts (`OPTIMIZE ... FINAL`, as merges leave a table in the long run)
and prints, per table, from `system.parts`: rows, bytes on disk, compressed and uncompressed
bytes of the data, the primary index in memory and the columns taking the most compressed bytes;
and the windows of each granularity.
"""

from __future__ import annotations

import argparse
import tempfile
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import orjson

from bench.sink.__main__ import PROJECTS
from bench.streams.feed import choose_projects, cosnap_mix, pack
from plumbing.clickhouse import connect
from schemas.series import DEFAULT_SERIES
from schemas.settings import StreamsSettings
from schemas.topics import EVENT_PARTITIONS
from sinks.clickhouse.ddl import apply_migrations
from sinks.clickhouse.rows import AGGREGATE_COLUMNS, EVENT_COLUMNS, aggregate_rows, event_rows
from sinks.clickhouse.writer import INSERT_SETTINGS
from streams.envelope import decode
from streams.series import SeriesResolver
from streams.watermark import Watermark
from streams.windows import EventTimeWindows

BATCH = 50_000


def rows_of(total: int, rate: int) -> Iterator[tuple[str, list[bytes]]]:
    """("events" | "aggregates", rows) as the sink would insert them, in the order written."""
    settings = StreamsSettings()
    windows = EventTimeWindows(
        Watermark(lateness_s=settings.window_lateness_s, idle_s=settings.watermark_idle_s),
        grace_s=settings.window_grace_s,
        series=SeriesResolver(DEFAULT_SERIES, settings.max_names_per_type),
    )
    span = timedelta(seconds=total / rate)
    start = datetime.now(UTC) - span - timedelta(minutes=5)
    offsets = dict.fromkeys(range(EVENT_PARTITIONS), 0)
    closed_at = 0.0
    for project, value in pack(cosnap_mix(total, choose_projects(PROJECTS), start, span)):
        partition = zlib.crc32(project.encode()) % EVENT_PARTITIONS
        yield "events", event_rows(value, partition, offsets[partition])
        received = max(datetime.fromisoformat(e["received_at"]) for e in orjson.loads(value)["events"])
        now = received.timestamp()
        windows.add_envelope(partition, decode(value), now, offsets[partition])
        offsets[partition] += 1
        if now - closed_at >= 1:
            closed_at = now
            for closed in windows.close_ready(now):
                yield (
                    "aggregates",
                    [row for _, record in closed.records for row in aggregate_rows(record, 0, 0)],
                )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000, help="windows close past ~300,000")
    parser.add_argument("--rate", type=int, default=7550)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="storage-") as data:
        client = connect(f"chdb://{data}")
        apply_migrations(client, "metrics")
        columns = {"events": EVENT_COLUMNS, "aggregates": AGGREGATE_COLUMNS}
        held: dict[str, list[bytes]] = {"events": [], "aggregates": []}

        def insert(table: str) -> None:
            client.raw_insert(
                f"metrics.{table}",
                columns[table],
                insert_block=b"\n".join(held[table]),
                fmt="JSONEachRow",
                settings=INSERT_SETTINGS,
            )
            held[table] = []

        for table, rows in rows_of(args.events, args.rate):
            held[table] += rows
            if len(held[table]) >= BATCH:
                insert(table)
        for table in held:
            if held[table]:
                insert(table)
        report: dict[str, object] = {"events_generated": args.events, "rate": args.rate}
        for table in columns:
            client.command(f"OPTIMIZE TABLE metrics.{table} FINAL")
            parts = client.query(
                "SELECT sum(rows), sum(bytes_on_disk), sum(data_compressed_bytes), "
                "sum(data_uncompressed_bytes), sum(primary_key_bytes_in_memory), sum(marks_bytes), count() "
                "FROM system.parts WHERE database = 'metrics' AND table = {t:String} AND active",
                parameters={"t": table},
            ).result_rows[0]
            stored, on_disk, compressed, uncompressed, primary, marks, count = (int(v) for v in parts)
            if not stored:  # no window closes within the lateness, grace and 10 s of event time
                report[table] = {"rows": 0}
                continue
            top = client.query(
                "SELECT name, data_compressed_bytes FROM system.columns "
                "WHERE database = 'metrics' AND table = {t:String} "
                "ORDER BY data_compressed_bytes DESC LIMIT 6",
                parameters={"t": table},
            ).result_rows
            report[table] = {
                "rows": stored,
                "parts": count,
                "bytes_on_disk_per_row": round(on_disk / stored, 2),
                "compressed_per_row": round(compressed / stored, 2),
                "uncompressed_per_row": round(uncompressed / stored, 2),
                "primary_index_and_marks_per_row": round((primary + marks) / stored, 4),
                "top_columns_compressed_per_row": {name: round(int(b) / stored, 2) for name, b in top},
            }
        granularities = client.query(
            "SELECT granularity, count() FROM metrics.aggregates GROUP BY granularity ORDER BY granularity"
        ).result_rows
        report["windows_per_granularity"] = {str(g): int(n) for g, n in granularities}
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode(), flush=True)


if __name__ == "__main__":
    main()
