"""Benchmarks of the streams worker: `python -m bench.streams` (throughput against a raw aiokafka
loop on the same topic) and `python -m bench.streams.memory` (RSS with 100k active series).

What both need lives here: a broker of their own with the pipeline's topics under a fresh
prefix, the worker as a child process, and a reader of the aggregates topic.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from bench.kafka import Bench
from cosnap_metrics.processes import spawn, stop

# The worker's line for the first record of a partition (the message of a JSON log line).
_OWNS = re.compile(r"owns events partition (\d+)")
_READY = re.compile(r"\[\^Worker\]: (Ready|.*OK \^)| OK \^$", re.M)


class Worker:
    """`cosnap-metrics streams` as a child process, its output in `<work>/streams.log`."""

    def __init__(self, bench: Bench, **env: str) -> None:
        self.log = bench.work / "streams.log"
        (bench.work / "data").mkdir(exist_ok=True)  # the worker makes only its own folder in it
        environment = os.environ | {
            "COSNAP_KAFKA_BOOTSTRAP": bench.bootstrap,
            "COSNAP_TOPIC_PREFIX": bench.topics.prefix,
            "COSNAP_DATA_DIR": str(bench.work / "data"),
            "COSNAP_LOG_LEVEL": "INFO",
            **env,
        }
        with self.log.open("ab") as out:
            self.process = spawn(
                [sys.executable, "-m", "cosnap_metrics.cli", "streams"], env=environment, stdout=out
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_ready(self, timeout: float = 90) -> None:
        """Until Faust says it has started (after it joined the group and got its partitions)."""
        deadline = time.monotonic() + timeout
        while not _READY.search(self.log.read_text(errors="replace")):
            if not self.alive():
                raise SystemExit(f"the worker exited with {self.process.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise SystemExit(f"the worker did not start within {timeout:.0f} s:\n{self.tail()}")
            time.sleep(0.1)

    def first_records(self) -> dict[int, float]:
        """Partition -> epoch time of its `owns events partition` line, logged when the worker
        has restored the partition's state for its first record (its checkpoint, and the alert
        records published since)."""
        found = {}
        for line in self.log.read_text(errors="replace").splitlines():
            if (owns := _OWNS.search(line)) is not None:
                logged = datetime.fromisoformat(orjson.loads(line)["timestamp"])
                found[int(owns.group(1))] = logged.timestamp()
        return found

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        stop(self.process, 20)


@dataclass
class AggregateTally:
    """What the worker emitted so far. Minute windows starting at or after `ignore_from` (the
    closers' own windows) are left out of `minute_events` and `minute_series`."""

    ignore_from: str
    minute_events: int = 0
    minute_series: set[str] = field(default_factory=set)
    records: Counter[str] = field(default_factory=Counter)
    overflow_windows: int = 0
    last_minute_at: float = 0.0  # when this process received the newest data minute window
    last_minute_written: float = 0.0  # when the worker wrote it (its Kafka CreateTime)
    newest_emitted_at: str = ""  # the worker's own clock when it closed that window
    # Every minute window, closers' included: (when the worker wrote it, seconds after its end).
    minute_closed: list[tuple[float, float]] = field(default_factory=list)


class AggregateReader:
    """Reads the aggregates topic (or `topic`, holding windows keyed and written as the worker
    writes them) from the beginning on a thread of its own and tallies it."""

    def __init__(self, bench: Bench, ignore_from: str, partitions: int = 6, topic: str | None = None) -> None:
        self.tally = AggregateTally(ignore_from)
        self._consumer = Consumer(
            {
                "bootstrap.servers": bench.bootstrap,
                "group.id": f"bench-aggregates-{uuid.uuid4().hex[:6]}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 20,
            }
        )
        self._consumer.assign(
            [TopicPartition(topic or bench.topics.aggregates, p, OFFSET_BEGINNING) for p in range(partitions)]
        )
        self._running = True
        self._thread = threading.Thread(target=self._run, name="aggregates", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        tally = self.tally
        while self._running:
            for message in self._consumer.consume(10_000, 0.1):
                key, value = message.key(), message.value()
                if message.error() is not None or key is None or value is None:
                    continue
                series, granularity, start = key.decode().split("|")
                tally.records[granularity] += 1
                if granularity == "1m":
                    written = message.timestamp()[1] / 1000
                    tally.minute_closed.append(
                        (written, written - datetime.fromisoformat(start).timestamp() - 60)
                    )
                if granularity != "1m" or start[:19] >= tally.ignore_from[:19]:
                    continue
                window = orjson.loads(value)
                tally.minute_events += window["count"]
                tally.minute_series.add(series)
                if "__overflow__" in window["dims"].values():
                    tally.overflow_windows += 1
                tally.last_minute_at = time.time()
                _, written_ms = message.timestamp()
                tally.last_minute_written = max(tally.last_minute_written, written_ms / 1000)
                tally.newest_emitted_at = max(tally.newest_emitted_at, window["emitted_at"])

    def close(self) -> None:
        self._running = False
        self._thread.join(5)
        self._consumer.close()


def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-offsets"})
    try:
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(partitions)
        }
    finally:
        consumer.close()


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offsets (without joining it); -1001 where none was committed."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        found = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return {tp.partition: tp.offset for tp in found}
    finally:
        consumer.close()
