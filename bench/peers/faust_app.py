"""The windowed aggregation of `python -m bench.peers` as a naive Faust agent: the project's
pinned faust-streaming, one event at a time into a tumbling Table.

    BENCH_PEER=... python -m bench.peers.faust_app worker -l warn

Configured by the environment (BENCH_BOOTSTRAP, BENCH_SOURCE, BENCH_SINK, BENCH_GROUP,
BENCH_DATA, BENCH_MARKS, BENCH_EVENTS). The agent decodes each envelope of BENCH_SOURCE with
orjson and, for each of its events, reads the series' current minute window from a Table
(`tumbling(60 s)`, relative to the event's own time), adds the event's value to its count, sum,
min and max and sets it back: Faust writes every set to the table's changelog topic. Faust
closes windows by the wall clock (`expires` after their end, checked every second); each closed
window goes to BENCH_SINK keyed `series|1m|<start>` as the worker writes its windows.

BENCH_MARKS receives JSON lines: `{"first_record": <epoch s>}` at the first envelope and
`{"folded": <epoch s>}` once BENCH_EVENTS events are folded.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import faust
import orjson

from bench.peers.series import minute_key, series_events

SOURCE, SINK = os.environ["BENCH_SOURCE"], os.environ["BENCH_SINK"]
MARKS = Path(os.environ["BENCH_MARKS"])
EVENTS = int(os.environ["BENCH_EVENTS"])

app = faust.App(
    os.environ["BENCH_GROUP"],
    broker=f"kafka://{os.environ['BENCH_BOOTSTRAP']}",
    datadir=os.environ["BENCH_DATA"],
    web_enabled=False,
    topic_partitions=6,
    table_cleanup_interval=1.0,
    consumer_auto_offset_reset="earliest",
)
source = app.topic(SOURCE, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
sink = app.topic(SINK, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
event_time = [0.0]  # the time of the event being folded: the windows are relative to it


def mark(**what: float) -> None:
    with MARKS.open("ab") as out:
        out.write(orjson.dumps(what) + b"\n")


async def closed(key: Any, value: list[float]) -> None:
    series, (start, _end) = key
    count, total, low, high = value
    window = {"count": count, "sum": total, "min": low, "max": high, "dims": {}}
    window["emitted_at"] = datetime.now(UTC).isoformat()
    await sink.send(key=minute_key(series, start).encode(), value=orjson.dumps(window))


minutes = app.Table("minutes", default=list, partitions=6, on_window_close=closed).tumbling(
    timedelta(minutes=1), expires=timedelta(seconds=30)
)
minutes = minutes.relative_to(lambda _event=None: event_time[0])  # type: ignore[attr-defined]


@app.agent(source)
async def fold(envelopes: faust.StreamT[bytes]) -> None:
    folded, done = 0, False
    async for value in envelopes:
        if not folded:
            mark(first_record=time.time())
        for series, stamp, number in series_events(orjson.loads(value)):
            event_time[0] = datetime.fromisoformat(stamp).timestamp()
            window = minutes[series].value()
            if not window:  # a new window: the table's default, []
                window = [1, number, number, number]
            else:
                window = [window[0] + 1, window[1] + number, min(window[2], number), max(window[3], number)]
            minutes[series] = window
            folded += 1
        if folded >= EVENTS and not done:
            mark(folded=time.time())
            done = True


if __name__ == "__main__":
    app.main()
