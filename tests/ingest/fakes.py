"""A producer that keeps what it is given in memory, and the ingest app served with it.

The HTTP behaviours that only depend on "Kafka took it" or "Kafka refused it" (status codes,
bodies, headers, CORS, write keys, limits, request ids, bad input) run against `ServedIngest`:
the app `cosnap-metrics ingest` serves (create_app), behind uvicorn on a loopback port, with a
`FakeProducer` in place of the Kafka one. What reaches Kafka is proven on a real broker
(tests marked `kafka`)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn

from ingest.app import create_app
from plumbing.kafka import KafkaUnavailable
from plumbing.keys import KeyStore
from schemas.settings import IngestSettings
from schemas.topics import MAX_RECORD_BYTES, Topics
from tests.conftest import free_port


@dataclass(frozen=True, slots=True)
class Produced:
    """One record a FakeProducer acknowledged."""

    topic: str
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]


def kafka_refused(why: str) -> KafkaUnavailable:
    """The error AckedProducer fails a record with when Kafka does not acknowledge it."""
    return KafkaUnavailable(f"Kafka did not acknowledge the records: {why}")


class FakeProducer:
    """A RecordProducer in memory: acknowledges every record at once and keeps it in `records`,
    or, while `failing`, refuses every record as AckedProducer does on a Kafka outage and
    answers `ready` with False; it refuses the records of the keys in `refused_keys` (one
    partition's leader unreachable, the others not). Like AckedProducer (message.max.bytes), it
    refuses a record over MAX_RECORD_BYTES, so that a request which would cost a 503 on Kafka
    costs one here."""

    def __init__(self) -> None:
        self.records: list[Produced] = []
        self.failing = False
        self.refused_keys: set[bytes] = set()
        self.closed = False

    def produce(
        self,
        topic: str,
        *,
        key: bytes | None,
        value: bytes,
        acked: asyncio.Future[None],
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        if self.failing or key in self.refused_keys:
            acked.set_exception(kafka_refused("Local: Message timed out"))
            return
        if len(value) + len(key or b"") > MAX_RECORD_BYTES:
            acked.set_exception(kafka_refused("Broker: Message size too large"))
            return
        self.records.append(Produced(topic, key, value, tuple(headers)))
        acked.set_result(None)

    async def send(
        self, topic: str, *, key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]] = ()
    ) -> None:
        acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.produce(topic, key=key, value=value, acked=acked, headers=headers)
        await acked

    def ready(self, timeout_s: float) -> bool:
        return not self.failing

    def close(self) -> None:
        self.closed = True


@dataclass
class ServedIngest:
    """The ingest app on a loopback port with a FakeProducer, in a thread of the test process.
    `settings` are IngestSettings fields that the test sets before `start`."""

    data_dir: Path
    producer: FakeProducer = field(default_factory=FakeProducer)
    settings: dict[str, Any] = field(default_factory=dict)
    topics: Topics = field(default_factory=lambda: Topics(f"t{uuid.uuid4().hex[:10]}."))
    port: int = field(default_factory=free_port)
    write_key: str = ""
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.write_key = KeyStore(self.data_dir / "write-keys.json").create("cosnap-test")

    @property
    def ingest_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        settings = IngestSettings(
            data_dir=self.data_dir,
            kafka_bootstrap="127.0.0.1:9",  # never dialled: the fake producer stands in for Kafka
            topic_prefix=self.topics.prefix,
            **self.settings,
        )
        app = create_app(settings, producer=self.producer)
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None, lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="served-ingest", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            assert self._thread.is_alive(), "the ingest app did not start"
            assert time.monotonic() < deadline, "the ingest app did not start within 30 s"
            time.sleep(0.01)

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=30)
            self._server = None
