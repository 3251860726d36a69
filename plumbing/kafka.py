"""A Kafka producer for asyncio services: idempotent, acks=all, each record (or batch) awaited.

The ingest API writes envelopes with it, the streams worker its windows. confluent-kafka
(librdkafka) was chosen by measurement against aiokafka and kafka-python (the figures are in
BENCHMARKS.md, "Ingest"). librdkafka delivers its reports on whichever thread calls poll(); a
daemon thread polls and hands each report to the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from plumbing.sentry import trace_headers
from schemas.errors import CosnapError
from schemas.topics import MAX_RECORD_BYTES

CLOSE_FLUSH_S = 2.0  # longest a closing producer waits for acknowledgements


class KafkaUnavailable(CosnapError):
    """Kafka did not acknowledge a record in time (refused, queue full, or timed out): nothing
    of it is known to be written; the caller retries later (the ingest API answers 503)."""


class RecordProducer(Protocol):
    """What the ingest app needs of a producer. AckedProducer is the real one; benchmarks
    substitute one that writes nothing, the HTTP tests one that keeps records in memory and can
    refuse them as AckedProducer does when Kafka does not acknowledge (KafkaUnavailable)."""

    def produce(
        self,
        topic: str,
        *,
        key: bytes | None,
        value: bytes,
        acked: asyncio.Future[None],
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None: ...

    async def send(
        self, topic: str, *, key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]] = ()
    ) -> None: ...

    def ready(self, timeout_s: float) -> bool: ...

    def close(self) -> None: ...


class AckedProducer:
    """Writes records and resolves when Kafka has acknowledged them on every in-sync replica."""

    def __init__(
        self,
        bootstrap: str,
        *,
        timeout_s: float,
        client_id: str,
        queue_max_messages: int = 100_000,
    ) -> None:
        self._timeout_s = timeout_s
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "client.id": client_id,
                # librdkafka would write its own lines to stderr; through logging they are JSON too.
                "logger": logging.getLogger("librdkafka"),
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 2,
                "compression.type": "lz4",
                "message.max.bytes": MAX_RECORD_BYTES,
                # A record not acknowledged by then fails with KafkaUnavailable.
                "message.timeout.ms": int(timeout_s * 1000),
                "queue.buffering.max.messages": queue_max_messages,
                # After an outage the broker is tried again within a second of its return (the
                # default waits up to 10 s between tries, so the ingest stayed unready as long).
                "reconnect.backoff.max.ms": 1000,
            }
        )
        self.unflushed = 0  # records close() could not deliver before its deadline
        self._running = True
        self._poller = threading.Thread(target=self._poll_forever, name="kafka-delivery", daemon=True)
        self._poller.start()

    def _poll_forever(self) -> None:
        while self._running:
            self._producer.poll(0.05)

    def produce(
        self,
        topic: str,
        *,
        key: bytes | None,
        value: bytes,
        acked: asyncio.Future[None],
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        """Queue one record; `acked` resolves once Kafka acknowledged it (acks=all), or fails with
        KafkaUnavailable (queue full, refused, or not acknowledged within the timeout). Never
        blocks; must be called on the event loop that owns `acked`. Inside a sampled Sentry
        transaction (an ingest request) the record carries its trace (plumbing.sentry)."""
        loop = acked.get_loop()
        sent: list[tuple[str, str | bytes | None]] = [*headers, *trace_headers()]

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            loop.call_soon_threadsafe(_settle, acked, err)

        try:
            self._producer.produce(topic, value=value, key=key, headers=sent, on_delivery=on_delivery)
        except BufferError:
            _settle(acked, "the Kafka producer queue is full")
        except KafkaException as exc:
            _settle(acked, exc)

    def produce_all(
        self, topic: str, records: list[tuple[bytes, bytes]], acked: asyncio.Future[None]
    ) -> None:
        """Queue many (key, value) records; `acked` resolves once Kafka acknowledged all of them,
        or fails with KafkaUnavailable on the first that failed. One future for the lot keeps the
        cost per record at librdkafka's. Never blocks; call it on the loop that owns `acked`."""
        if not records:
            acked.set_result(None)
            return
        loop = acked.get_loop()
        remaining = len(records)

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            nonlocal remaining  # delivery reports all run on the poller thread: no race
            remaining -= 1
            if err is not None or remaining == 0:
                loop.call_soon_threadsafe(_settle, acked, err)

        try:
            for key, value in records:
                self._producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
        except BufferError:
            _settle(acked, "the Kafka producer queue is full")
        except KafkaException as exc:
            _settle(acked, exc)

    async def send(
        self, topic: str, *, key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]] = ()
    ) -> None:
        """Write one record and wait for its acknowledgement; raises KafkaUnavailable."""
        acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.produce(topic, key=key, value=value, acked=acked, headers=headers)
        await acked

    def ready(self, timeout_s: float) -> bool:
        """True when the cluster answers a metadata request (blocking, up to `timeout_s`)."""
        try:
            self._producer.list_topics(timeout=timeout_s)
        except KafkaException:
            return False
        return True

    def queued(self) -> int:
        """Records handed over and not yet acknowledged (or failed)."""
        return len(self._producer)

    def close(self) -> None:
        """Deliver what is queued, for at most CLOSE_FLUSH_S (a service stopping while Kafka is
        down must not wait out the full timeout), then stop the poller. What was not delivered
        is counted in `unflushed` and purged: its futures fail now, not at the timeout."""
        self.unflushed = self._producer.flush(min(self._timeout_s, CLOSE_FLUSH_S))
        if self.unflushed:
            self._producer.purge()
            self._producer.poll(0)  # serves the purged records' delivery reports
        self._running = False
        self._poller.join()


def _settle(future: asyncio.Future[None], err: Any) -> None:
    if future.done():
        return
    if err is None:
        future.set_result(None)
    else:
        future.set_exception(KafkaUnavailable(f"Kafka did not acknowledge the records: {err}"))
