"""What the worker cannot fold goes to the dead-letter topic, as the sink does with records it
cannot decode: it is in no window, and it does not stop its partition.

Each dead letter carries the header naming the requests of its events record, and is logged with
the record's place (an unreadable record at error level, which reports it to Sentry).
"""

from __future__ import annotations

import asyncio
import logging

import orjson

from schemas.records import DeadLetter, request_ids_header, request_ids_in
from streams.envelope import EnvelopeView, Event, raw_events
from streams.partitions import EventsMessage, record_context
from streams.publishing import RecordSender

log = logging.getLogger("cosnap.streams")


class DeadLetters:
    """Sends dead letters of events records to `topic` and waits until Kafka has them."""

    def __init__(self, sender: RecordSender, topic: str) -> None:
        self._sender = sender
        self._topic = topic

    async def unreadable(self, message: EventsMessage, value: bytes, exc: Exception) -> None:
        """Dead-letter a whole record the worker cannot read (`value`, failing with `exc`)."""
        request_ids = request_ids_in(message.headers)
        log.error(
            "folding the envelope %s[%d]@%d failed: dead-lettered",
            message.topic,
            message.partition,
            message.offset,
            exc_info=exc,
            extra=record_context(message.topic, message.partition, message.offset)
            | {"request_ids": request_ids},
        )
        dead_letter = DeadLetter.of_record(
            message.topic,
            message.partition,
            message.offset,
            project=None,
            reason=f"streams worker could not read the envelope: {exc}",
            raw=value,
        )
        record = dead_letter.model_dump_json().encode()
        headers = [request_ids_header(request_ids)]
        await (await self._sender.send(self._topic, message.key or b"", record, headers=headers))

    async def events(
        self,
        message: EventsMessage,
        value: bytes,
        envelope: EnvelopeView,
        refused: list[tuple[Event, str]],
        what: str,
    ) -> None:
        """Dead-letter events of a record one each with its reason: those no window can hold
        (a record written past the ingest: a timestamp that is no time, an amount Decimal(38, 9)
        cannot hold), or the first event of a name over its cap (counted under `__overflow__`,
        the dead letter says so). `what` says which, in the log line."""
        positions = {id(event): i for i, event in enumerate(envelope.events)}
        raws = raw_events(value)
        request_ids = request_ids_in(message.headers)
        headers = [request_ids_header(request_ids)]
        key = envelope.project.encode()
        acks = []
        for event, reason in refused:
            index = positions[id(event)]
            dead_letter = DeadLetter.of_record(
                message.topic,
                message.partition,
                message.offset,
                project=envelope.project,
                index=index,
                reason=reason,
                raw=orjson.dumps(raws[index]),
                request_id=str(raws[index].get("request_id") or ""),
            )
            record = dead_letter.model_dump_json().encode()
            acks.append(await self._sender.send(self._topic, key, record, headers=headers))
        await asyncio.gather(*acks)
        log.warning(
            "%d events of %s[%d]@%d %s: dead-lettered",
            len(refused),
            message.topic,
            message.partition,
            message.offset,
            what,
            extra=record_context(message.topic, message.partition, message.offset)
            | {"request_ids": request_ids, "reasons": sorted({reason for _, reason in refused})[:5]},
        )
