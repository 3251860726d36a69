"""Packing the events of concurrent requests into shared envelopes.

Faust pays a fixed cost per Kafka record whatever its size, so one-event records would cap the
stream worker at a small fraction of the rate it folds shared records at. Events of one Kafka key
(a project, or a project's series when envelopes are keyed by series: docs/reference.md,
"Spreading a project over partitions") that arrive within `linger_s` of each other share an
envelope, whichever requests they came with; a request's 202 waits until every envelope holding
its events is acknowledged. An envelope is one record: it is written whole or not at all, so a
failed write fails exactly the requests that had events in it (and a request whose events went
into several envelopes fails when one of them does: its retry repeats the others, which the
worker and the sink count once, by event id).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from ingest.metrics import ENVELOPE_BYTES, ENVELOPE_EVENTS, observe_produce
from plumbing.kafka import RecordProducer
from schemas.records import MAX_HEADER_REQUEST_IDS, request_ids_header

_HEAD = b'{"v":1,"project":'


@dataclass(slots=True)
class _OpenEnvelope:
    project_json: bytes
    acked: asyncio.Future[None]
    events: list[bytes] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)  # for the record's header, bounded
    size: int = 0
    timer: asyncio.TimerHandle | None = None


class EnvelopePacker:
    """Called from the event loop only. `submit` blocks (asynchronously) until Kafka acknowledged
    the events, and raises KafkaUnavailable when it did not."""

    def __init__(
        self,
        producer: RecordProducer,
        topic: str,
        *,
        linger_s: float,
        max_events: int = 1000,
        max_bytes: int = 1_000_000,
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._linger_s = linger_s
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._open: dict[bytes, _OpenEnvelope] = {}
        self.envelopes_sent = 0

    async def submit(
        self, project_json: bytes, events: list[bytes], keys: bytes | list[bytes], request_id: str
    ) -> None:
        """Add `events` (each one JSON object) of request `request_id` to the open envelopes of
        their Kafka keys and wait for the acks. `project_json` is the project name as a JSON
        string; `keys` the key of every event (a list as long as `events`) or of all of them."""
        waits: set[asyncio.Future[None]] = set()
        last: asyncio.Future[None] | None = None  # the envelope of the previous event, mostly this one's
        for n, event in enumerate(events):
            key = keys if isinstance(keys, bytes) else keys[n]
            envelope = self._open.get(key)
            if envelope is not None and (
                len(envelope.events) >= self._max_events or envelope.size + len(event) > self._max_bytes
            ):
                self._seal(key)
                envelope = None
            if envelope is None:
                envelope = self._start(key, project_json)
            envelope.events.append(event)
            envelope.size += len(event) + 1
            if envelope.acked is not last and envelope.acked not in waits:
                waits.add(envelope.acked)
                if len(envelope.request_ids) < MAX_HEADER_REQUEST_IDS:
                    envelope.request_ids.append(request_id)
            last = envelope.acked
        if self._linger_s == 0:
            for key in {keys} if isinstance(keys, bytes) else set(keys):
                self._seal(key)
        await asyncio.gather(*waits)

    def _start(self, key: bytes, project_json: bytes) -> _OpenEnvelope:
        loop = asyncio.get_running_loop()
        envelope = _OpenEnvelope(project_json, loop.create_future())
        if self._linger_s > 0:
            envelope.timer = loop.call_later(self._linger_s, self._seal, key)
        self._open[key] = envelope
        return envelope

    def _seal(self, key: bytes) -> None:
        envelope = self._open.pop(key, None)
        if envelope is None:
            return
        if envelope.timer is not None:
            envelope.timer.cancel()
        value = b"".join([_HEAD, envelope.project_json, b',"events":[', b",".join(envelope.events), b"]}"])
        self.envelopes_sent += 1
        ENVELOPE_EVENTS.observe(len(envelope.events))
        ENVELOPE_BYTES.observe(len(value))
        envelope.acked.add_done_callback(observe_produce(time.perf_counter()))
        self._producer.produce(
            self._topic,
            key=key,
            value=value,
            acked=envelope.acked,
            headers=[request_ids_header(envelope.request_ids)],
        )

    def flush_open(self) -> None:
        """Seal every open envelope now (at shutdown)."""
        for key in list(self._open):
            self._seal(key)
