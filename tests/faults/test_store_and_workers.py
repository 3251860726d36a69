"""The store unavailable to the sink for 60 s, and a rebalance storm of workers, under load on the
file's three-node cluster. Nothing acknowledged is lost and nothing is counted twice
(tests/faults/harness.py).

The store is chDB, embedded in the sink's process, its directory on a tmpfs of its own: the test
fills that disk past the sink's free-space floor, so every insert is refused for 60 s while the sink
keeps running, retrying its batch and committing nothing; the events it could not store wait in
Kafka, as they would for a ClickHouse server out of disk. Freeing the disk lets the sink drain the
backlog."""

from __future__ import annotations

import time

import pytest

from tests.conftest import Pipeline
from tests.faults.harness import (
    LOAD_AROUND_S,
    Load,
    fill,
    recovery_s,
    settle_and_measure,
    windows_recovery_s,
)

pytestmark = [pytest.mark.kafka, pytest.mark.e2e, pytest.mark.faults, pytest.mark.timeout(420)]

STORE_DOWN_S = 60.0
# Free space left on the store's disk: below the sink's floor (harness.PIPELINE_ENV), so that
# ClickHouse refuses every insert, with room for what a merge running at that moment still
# writes (docs/findings.md: a merge that hits a full disk commits an empty part).
HEADROOM = 32 << 20
STORM_PERIOD_S = 10.0
STORM_S = 60.0


def test_the_store_out_of_disk_for_60_s_backlog_drained(faulted: Pipeline) -> None:
    sink_log = faulted.logs / "sink.log"
    with Load(faulted, "fault-store-full") as load:
        time.sleep(LOAD_AROUND_S)
        logged = sink_log.stat().st_size
        filler = fill(faulted.data_dir / "clickhouse", HEADROOM)
        try:
            time.sleep(STORE_DOWN_S)
        finally:
            filler.unlink()
        freed = time.monotonic()
        refused = sink_log.read_bytes()[logged:]
        recovered = recovery_s(faulted, load, freed)
        time.sleep(LOAD_AROUND_S)
    settle_and_measure(faulted, load, "the store out of disk for 60 s", recovered)
    assert b"retrying in" in refused, refused[-2000:]  # the store did refuse the sink's inserts
    assert faulted.processes["sink"].poll() is None
    assert load.statuses[503] == 0  # the ingest never waits for the store


def test_a_rebalance_storm_of_workers_keeps_every_window_exact(faulted: Pipeline) -> None:
    with Load(faulted, "fault-rebalance-storm") as load:
        time.sleep(LOAD_AROUND_S)
        # Every 10 s a worker joins and the one that joined before leaves (SIGTERM), for a
        # minute: the group rebalances at each join and each leave, beside the first worker.
        joined: list[str] = []
        for n in range(2, 2 + int(STORM_S / STORM_PERIOD_S)):
            joined.append(f"streams#{n}")
            faulted.start(joined[-1])
            if len(joined) > 1:
                faulted.stop(joined[-2])
            time.sleep(STORM_PERIOD_S)
        faulted.stop(joined[-1])
        calm = time.monotonic()
        recovered = windows_recovery_s(faulted, load, calm)
        time.sleep(LOAD_AROUND_S)
    settle_and_measure(
        faulted, load, "rebalance storm: a worker joining and one leaving every 10 s for 60 s", recovered
    )
