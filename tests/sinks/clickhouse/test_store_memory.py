"""The store's memory on the sink's /metrics (sinks/clickhouse/metrics.py, StoreMemory), read from
chDB itself: its tracked memory and caches, the active parts with their rows, primary index and
marks, and its allocator's totals; nothing before a store is watched or once it is closed."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from plumbing.clickhouse import connect
from sinks.clickhouse.ddl import apply_migrations
from sinks.clickhouse.metrics import STORE_MEMORY_METRICS, StoreMemory


def samples(collector: StoreMemory) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(collector)
    out = {}
    for line in generate_latest(registry).decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_the_store_reports_its_memory_parts_and_allocator(tmp_path: Path) -> None:
    collector = StoreMemory()
    assert samples(collector) == {}  # no store watched yet
    client = connect(f"chdb://{tmp_path / 'chdb'}")
    apply_migrations(client, "m")
    client.command(
        "INSERT INTO m.events (event_id, project, type, timestamp, received_at, kafka_partition, "
        "kafka_offset) SELECT toString(number), 'p', 'feature', now64(3), now64(3), 0, number "
        "FROM numbers(100000)"
    )
    collector.watch(client, "m")
    found = samples(collector)

    for metric in STORE_MEMORY_METRICS:
        assert f'cosnap_sink_store_memory_bytes{{metric="{metric}"}}' in found
    assert found['cosnap_sink_store_memory_bytes{metric="MemoryTracking"}'] > 1_000_000
    assert found['cosnap_sink_store_rows{table="events"}'] == 100_000
    assert found['cosnap_sink_store_parts{table="events"}'] >= 1
    assert 'cosnap_sink_store_rows{table="aggregates"}' not in found  # no part yet
    index = found['cosnap_sink_store_part_bytes{kind="primary_index",table="events"}']
    marks = found['cosnap_sink_store_part_bytes{kind="marks",table="events"}']
    assert 0 < index < 100_000 and 0 < marks < 100_000  # per granule of 8,192 rows, not per row
    allocator = {k: v for k, v in found.items() if k.startswith("cosnap_sink_store_allocator_bytes")}
    kinds = ("allocated", "active", "metadata", "resident", "mapped", "retained")
    assert sorted(allocator) == sorted(f'cosnap_sink_store_allocator_bytes{{kind="{k}"}}' for k in kinds)
    assert (
        0
        < allocator['cosnap_sink_store_allocator_bytes{kind="allocated"}']
        <= allocator['cosnap_sink_store_allocator_bytes{kind="resident"}']
    )

    client.close()
    assert samples(collector) == {}  # a closed store: the scrape goes on without these
