"""What every fault test shares: one pipeline per test file on the file's three-node cluster, a
load in flight while the fault happens, and the figures of the fault (RELIABILITY.md's columns).

Each fault posts as a project of its own (a write key created for it: the ingest re-reads its key
store), so the faults of a file run one after another on the same services and each is measured
on its own rows. The load posts the demo's mix (`CosnapTraffic`) at a steady rate through the
Python SDK's transport (`HttpTransport`: one batch, one request, one verdict) and retries a batch
the API could not take as the SDK does, under the same event_ids, after the server's Retry-After
or the SDK's backoff. It remembers every event_id answered 202, every 503 with its Retry-After
and every retry.
"""

from __future__ import annotations

import errno
import random
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import orjson
from cosnap_metrics_sdk.backoff import Backoff
from cosnap_metrics_sdk.transport import HttpTransport, Outcome, SendResult

from cosnap_metrics.broker import KafkaCluster, describe_partition
from cosnap_metrics.demo import CosnapTraffic
from plumbing.keys import KeyStore
from tests.conftest import Pipeline, make_pipeline, wait_for
from tests.recount import windows_and_recount

RATE = 250.0  # events/s: modest, the machine has two cores shared with the rest of the suite
MAX_BATCH = 500  # events a request carries when the load catches up after a stall
LOAD_AROUND_S = 8.0  # the load runs this long before a fault, and again after recovery
DRAINED_WITHIN_S = 240.0  # every acknowledged event stored and every 1-minute window closed
RECOVERED_WITHIN_S = 120.0  # an event posted after the fault ended is queryable
IN_SYNC_WITHIN_S = 120.0  # a node started again is back in every ISR (two busy cores)
STORE_DISK = "512m"  # the sink's chDB directory: a file's faults write a few tens of MiB
PIPELINE_ENV = {
    "COSNAP_CHECKPOINT_S": "1",
    "COSNAP_WINDOW_GRACE_S": "2",
    "COSNAP_WATERMARK_IDLE_S": "2",
    "COSNAP_CLICKHOUSE_MIN_FREE_BYTES": str(64 << 20),  # the store's disk is STORE_DISK
}


@contextmanager
def pipeline_on(cluster: KafkaCluster, tmp_path: Path) -> Iterator[Pipeline]:
    """The sink, the worker and the ingest on `cluster`, with topics of their own and the sink's
    chDB directory on a tmpfs of STORE_DISK (so a test can fill the store's disk), for the faults
    of one test file; every node of the cluster is running again when it ends."""
    pipeline = make_pipeline(cluster, tmp_path)
    pipeline.env |= PIPELINE_ENV
    with tmpfs(pipeline.data_dir / "clickhouse", STORE_DISK):
        try:
            pipeline.start("sink", "streams", "ingest")
            yield pipeline
        finally:
            pipeline.stop()
            down = [node for node in cluster.nodes if node.process is None]
            if down:
                cluster.restart(down)


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (mount's `size=`, e.g. `64m`) mounted on `path` (made if missing) for
    the block: a disk of its own that a test can fill (root only)."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True)  # noqa: S603, S607
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=True)  # noqa: S603, S607


def fill(directory: Path, leave: int = 0) -> Path:
    """Write zeros to `directory/filler` until its file system has no space left, then give
    `leave` bytes of it back; the file."""
    filler = directory / "filler"
    chunk = bytes(1 << 20)
    with filler.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(chunk)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
        out.truncate(max(filler.stat().st_size - leave, 0))
    return filler


def all_in_sync(cluster: KafkaCluster, topic: str, partitions: int = 6) -> bool:
    return all(len(describe_partition(cluster.bootstrap, topic, p).isr) == 3 for p in range(partitions))


class Load:
    """A thread posting `rate` events a second to the ingest as project `project` (a key created
    for it) until `stop()`; a batch refused with 408/429/5xx or a network error is sent again,
    whole, under the same event_ids.

    Counters are read after `stop()`, except `acknowledged_after`, which is safe at any time.
    """

    def __init__(self, pipeline: Pipeline, project: str, rate: float = RATE) -> None:
        self.project = project
        self.rate = rate
        self.posted = 0  # events sent at least once
        self.statuses: Counter[int | None] = Counter()  # every attempt's status (None: no answer)
        self.retry_after: list[float] = []  # of every 503
        self.retries = 0  # attempts that sent a batch again
        self.refused: list[SendResult] = []  # batches refused for good (a 4xx): must stay empty
        self._acknowledged: list[tuple[float, str]] = []  # (monotonic time of the 202, event_id)
        self._lock = threading.Lock()
        self._traffic = CosnapTraffic(random.Random(project))
        write_key = KeyStore(pipeline.data_dir / "write-keys.json").create(project)
        self._transport = HttpTransport(
            pipeline.ingest_url, write_key, timeout=60.0, user_agent="cosnap-faults"
        )
        self._backoff = Backoff(0.5, 5.0)
        self._stopping = threading.Event()
        self._give_up = threading.Event()
        self.in_flight = threading.Event()  # set while a request is on its way
        self._thread = threading.Thread(target=self._run, name="fault-load", daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, timeout: float = 120.0) -> None:
        """Stop drawing events; the batch in flight is retried until delivered or `timeout`."""
        self._stopping.set()
        self._thread.join(timeout)
        self._give_up.set()
        self._thread.join()
        self._transport.close()

    @property
    def acknowledged(self) -> list[str]:
        with self._lock:
            return [event_id for _, event_id in self._acknowledged]

    def acknowledged_after(self, mark: float) -> list[str]:
        """The event_ids whose 202 came after `mark` (time.monotonic())."""
        with self._lock:
            return [event_id for at, event_id in self._acknowledged if at > mark]

    def _run(self) -> None:
        started, drawn = time.monotonic(), 0
        while not self._stopping.is_set():
            due = int((time.monotonic() - started) * self.rate) - drawn
            if due <= 0:
                time.sleep(0.05)
                continue
            size = min(due, MAX_BATCH)
            self._deliver([self._traffic.event() for _ in range(size)])
            drawn += size

    def _deliver(self, events: list[dict[str, object]]) -> None:
        encoded = [orjson.dumps(event) for event in events]
        self.posted += len(events)
        attempt = 0
        while True:
            self.in_flight.set()
            result = self._transport.send(encoded)
            self.in_flight.clear()
            self.statuses[result.status] += 1
            if result.outcome is Outcome.DELIVERED:
                rejected = {rejection.index for rejection in result.rejected}
                now = time.monotonic()
                with self._lock:
                    self._acknowledged.extend(
                        (now, str(event["event_id"])) for i, event in enumerate(events) if i not in rejected
                    )
                if rejected:
                    self.refused.append(result)
                return
            if result.outcome is Outcome.REFUSED:
                self.refused.append(result)
                return
            if result.status == 503 and result.retry_after is not None:
                self.retry_after.append(result.retry_after)
            attempt += 1
            self.retries += 1
            if self._give_up.wait(self._backoff.delay(attempt, result.retry_after)):
                return


def events_partition(pipeline: Pipeline, load: Load) -> int:
    """The events partition the load's project is keyed to, once one of its events is stored."""
    sql = f"SELECT any(kafka_partition) FROM metrics.events WHERE project = '{load.project}'"  # noqa: S608
    found = wait_for(lambda: pipeline.query(sql) if load.acknowledged else None, 60)
    assert found, pipeline.log("sink")[-2000:]
    return int(str(found[0][0]))


def recovery_s(pipeline: Pipeline, load: Load, fault_ended: float) -> float:
    """Seconds from `fault_ended` (time.monotonic()) until an event acknowledged after it is in
    metrics.events, polled every half second."""

    def stored() -> bool:
        ids = load.acknowledged_after(fault_ended)[-20:]
        if not ids:
            return False
        quoted = ",".join(f"'{event_id}'" for event_id in ids)  # hex ids the load drew
        sql = f"SELECT count() FROM metrics.events WHERE event_id IN ({quoted})"  # noqa: S608
        return pipeline.query(sql) != [[0]]

    return _recovered(pipeline, stored, fault_ended)


def windows_recovery_s(pipeline: Pipeline, load: Load, fault_ended: float) -> float:
    """Seconds from `fault_ended` (time.monotonic()) until a 10-second window of the load's
    events timed after it is in metrics.aggregates: the worker's recovery, which the stored events
    do not show (the sink stores them without the worker)."""
    since = time.time() - (time.monotonic() - fault_ended)
    sql = (
        "SELECT count() FROM metrics.aggregates WHERE granularity = '10s'"  # noqa: S608
        f" AND project = '{load.project}' AND window_start >= toDateTime64({since:.3f}, 3)"
    )
    return _recovered(pipeline, lambda: pipeline.query(sql) != [[0]], fault_ended)


def _recovered(pipeline: Pipeline, check: Callable[[], bool], fault_ended: float) -> float:
    assert wait_for(check, RECOVERED_WITHIN_S, interval=0.5), (
        pipeline.log("sink")[-2000:],
        pipeline.log("streams")[-2000:],
    )
    return time.monotonic() - fault_ended


@dataclass(frozen=True)
class Figures:
    """One row of RELIABILITY.md."""

    fault: str
    rate: float
    posted: int
    acknowledged: int
    stored: int
    copies: int  # rows beyond one per event_id before FINAL: replays the engine collapses
    duplicates: int  # events counted twice: in FINAL, or in the 1-minute windows
    lost: int
    refused_503: int
    retries: int
    recovery_s: float

    def row(self) -> str:
        return (
            f"| {self.fault} | {self.rate:.0f}/s | {self.posted:,} | {self.acknowledged:,} | {self.stored:,}"
            f" | {self.copies:,} | {self.duplicates} | {self.lost}"
            f" | {self.refused_503} ({self.retries} retries) | {self.recovery_s:.1f} s |"
        )


def settle_and_measure(pipeline: Pipeline, load: Load, fault: str, recovered_s: float) -> Figures:
    """After `load.stop()`: wait until every acknowledged event of the load's project is stored
    and its 1-minute windows count every stored event, then take the figures and hold the
    pipeline to its contract: nothing acknowledged lost, nothing refused, no event twice in
    metrics.events FINAL or in the windows, every window equal to the recount of its events."""
    acknowledged = set(load.acknowledged)
    project = f"project = '{load.project}'"
    assert not load.refused, load.refused[:3]

    def stored_ids() -> set[str]:
        sql = f"SELECT event_id FROM metrics.events FINAL WHERE {project}"  # noqa: S608
        return {str(row[0]) for row in pipeline.query(sql)}

    assert wait_for(lambda: acknowledged <= stored_ids(), DRAINED_WITHIN_S, interval=2), (
        len(acknowledged - stored_ids()),
        pipeline.log("sink")[-3000:],
    )
    [[final_rows, unique, raw_rows]] = pipeline.query(
        f"SELECT (SELECT count() FROM metrics.events FINAL WHERE {project}), uniqExact(event_id), count()"  # noqa: S608
        f" FROM metrics.events WHERE {project}"
    )
    windowed = f"SELECT sum(count) FROM metrics.windows WHERE granularity = '1m' AND {project}"  # noqa: S608
    assert wait_for(lambda: pipeline.query(windowed) == [[final_rows]], DRAINED_WITHIN_S, interval=2), (
        pipeline.query(windowed),
        final_rows,
        pipeline.log("streams")[-3000:],
    )
    windows, recounted = windows_and_recount(pipeline)
    windows = {key: value for key, value in windows.items() if key[0] == load.project}
    recounted = {key: value for key, value in recounted.items() if key[0] == load.project}
    rows, unique = int(str(final_rows)), int(str(unique))
    windowed_count = sum(count for count, _ in windows.values())
    figures = Figures(
        fault=fault,
        rate=load.rate,
        posted=load.posted,
        acknowledged=len(acknowledged),
        stored=unique,
        copies=int(str(raw_rows)) - unique,
        duplicates=rows - unique + max(0, windowed_count - rows),
        lost=len(acknowledged - stored_ids()),
        refused_503=load.statuses[503],
        retries=load.retries,
        recovery_s=recovered_s,
    )
    print(f"\n{figures.row()}\n  attempts by status {dict(load.statuses)}")
    print(f"  Retry-After of the 503s: {sorted(set(load.retry_after))}")
    assert figures.lost == 0 and figures.duplicates == 0, figures
    assert windows == recounted
    assert all(seconds > 0 for seconds in load.retry_after)
    return figures
