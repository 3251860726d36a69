"""The Faust worker: envelopes in, final 10-second, 1-minute and 1-hour windows out.

Agents stay thin: they decode records and hand them to `EventTimeWindows`; a timer closes
windows and sends them to the aggregates topic; events too late for their window go to the
dead-letter topic with the reason `late`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import faust
import orjson

from schemas.series import DEFAULT_SERIES
from schemas.settings import StreamsSettings
from streams.series import SeriesResolver
from streams.watermark import Watermark
from streams.windows import EventTimeWindows

log = logging.getLogger("cosnap.streams")


def create_app(settings: StreamsSettings) -> faust.App:
    topics = settings.topics
    app = faust.App(
        f"{topics.internal}streams",
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="memory://",
        datadir=str(settings.data_dir / "streams"),
        web_enabled=False,
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
        topic_replication_factor=1,
    )
    events = app.topic(topics.events, key_serializer="raw", value_serializer="raw")
    aggregates = app.topic(topics.aggregates, key_serializer="raw", value_serializer="raw")
    dead_letter = app.topic(topics.dead_letter, key_serializer="raw", value_serializer="raw")
    windows = EventTimeWindows(
        Watermark(lateness_s=settings.window_lateness_s, idle_s=settings.watermark_idle_s),
        grace_s=settings.window_grace_s,
        series=SeriesResolver(DEFAULT_SERIES),
    )

    @app.agent(events)
    async def fold_envelopes(stream: Any) -> None:
        async for record in stream.events():
            envelope = orjson.loads(record.value)
            late = windows.add_envelope(record.message.partition, envelope, time.time())
            for event in late:
                await dead_letter.send(key=envelope["project"].encode(), value=_late_record(envelope, event))

    @app.timer(settings.tick_s)
    async def emit_closed_windows() -> None:
        for window in windows.close_ready(time.time()):
            key = f"{window['series_id']}|{window['granularity']}|{window['window_start']}"
            await aggregates.send(key=key.encode(), value=orjson.dumps(window))

    return app


def _late_record(envelope: dict[str, Any], event: dict[str, Any]) -> bytes:
    """A dead-letter record (schemas.records.DeadLetter) for an event its window closed without."""
    return orjson.dumps(
        {
            "v": 1,
            "project": envelope["project"],
            "request_id": event["request_id"],
            "received_at": event["received_at"],
            "index": None,
            "reason": "late",
            "raw": orjson.dumps(event).decode(),
        }
    )
