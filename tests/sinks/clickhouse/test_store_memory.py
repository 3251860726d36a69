"""The store's memory on the sink's /metrics (sinks/clickhouse/metrics.py, StoreMemory), read from
chDB itself: its tracked memory and caches, the active parts with their rows, primary index and
marks, and its allocator's totals (linted by `promtool check metrics`); nothing before a store is
watched or once it is closed. And the engine's caches, bounded (plumbing/clickhouse.py) whichever
handle opens it first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from plumbing.clickhouse import CHDB_CACHE_BYTES, connect
from sinks.clickhouse.ddl import apply_migrations
from sinks.clickhouse.metrics import STORE_MEMORY_METRICS, StoreMemory


def exposition(collector: StoreMemory) -> bytes:
    registry = CollectorRegistry()
    registry.register(collector)
    return generate_latest(registry)


def samples(collector: StoreMemory) -> dict[str, float]:
    out = {}
    for line in exposition(collector).decode().splitlines():
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
    assert found['cosnap_sink_store_parts{state="active",table="events"}'] >= 1
    assert found['cosnap_sink_store_parts{state="outdated",table="events"}'] >= 0
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

    lint = subprocess.run(["promtool", "check", "metrics"], input=exposition(collector), capture_output=True)
    assert lint.returncode == 0, lint.stdout.decode() + lint.stderr.decode()

    client.close()
    assert samples(collector) == {}  # a closed store: the scrape goes on without these


def test_the_engine_s_caches_are_bounded_whichever_handle_opens_it(tmp_path: Path) -> None:
    """In a process of its own each time: chDB is opened once per process, by the sink's client
    (`connect`) or, for `cosnap-metrics query` without a running pipeline, by the query service's
    engine handle (`chdb.connect(chdb_connection(url))`)."""
    read_bounds = (
        "import sys; from plumbing.clickhouse import CHDB_CACHE_BYTES, chdb_connection, connect\n"
        "url = sys.argv[1]\n"
        "if sys.argv[2] == 'engine':\n"
        "    import chdb; chdb.connect(chdb_connection(url)).query('SELECT 1')\n"
        "client = connect(url)\n"
        "found = dict(client.query('SELECT name, toUInt64(value) FROM system.server_settings "
        "WHERE name IN %(n)s', parameters={'n': list(CHDB_CACHE_BYTES)}).result_rows)\n"
        "client.close()\n"
        "assert found == CHDB_CACHE_BYTES, found\n"
    )
    for first in ("client", "engine"):
        done = subprocess.run(
            [sys.executable, "-c", read_bounds, f"chdb://{tmp_path / first}", first],
            capture_output=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert all(0 < size <= 64 * 1024 * 1024 for size in CHDB_CACHE_BYTES.values())
