"""Late events: those whose 10-second pane had closed when the worker read them.

They are in no on-time window and in no alert rule. The worker writes them, per events record,
with the series its resolver gave each (so the same dimensions and caps as the windows), the value
each adds and its sketch bin, to `metrics.internal.late` (schemas.records.LateEvents). The sink
turns them into correction rows of the windows they belong to, keyed by the record they came in
(sinks/clickhouse/corrections.py): a replay of the record writes the same rows again, which replace.

Late records leave the worker only after a checkpoint that covers their events record (they are
part of the checkpoint until Kafka has them): a worker that resumes from an older checkpoint reads
the record again and may find an event on time that was late before (its pane is open again in
the restored state) — had the late record gone out already, the event would count twice.
"""

from __future__ import annotations

from typing import Any

import orjson

from streams.envelope import Event
from streams.series import Series
from streams.sketch import bin_of
from streams.windows import decimal_nanos, decimal_text, iso, nanos


def late_record(
    project: str,
    partition: int,
    offset: int,
    folded_at: float,
    late: list[tuple[Event, Series]],
    step_index: dict[tuple[str, str], int],
) -> bytes:
    """The LateEvents record of the late events of record `offset` of events partition `partition`."""
    series: dict[str, dict[str, Any]] = {}
    events = []
    for event, found in late:
        if found.id not in series:
            _, kind, name, currency, dims = found.key
            series[found.id] = {"type": kind, "name": name, "currency": currency, "dims": dict(dims)}
            if found.step is not None and found.step in step_index:
                series[found.id]["step_index"] = step_index[found.step]
        item: dict[str, Any] = {
            "event_id": event.event_id,
            "series_id": found.id,
            "timestamp": event.timestamp,
            "received_at": event.received_at or None,
        }
        spec = found.spec
        if spec.value is None:
            item["value"] = "1"
        else:
            value = getattr(event, spec.value)
            item["value"] = decimal_text(decimal_nanos(value) if spec.exact else nanos(value))
            if spec.sketched:
                item["bin"] = bin_of(value)
        events.append(item)
    return orjson.dumps(
        {
            "v": 1,
            "project": project,
            "partition": partition,
            "offset": offset,
            "folded_at": iso(folded_at),
            "series": series,
            "events": events,
        }
    )
