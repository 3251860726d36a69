"""The windowed aggregation of `python -m bench.peers` on Quix Streams, run in Quix's own
virtualenv (it imports only Quix Streams and the standard library).

    python -m bench.peers.quix_app BOOTSTRAP SOURCE SINK GROUP STATE_DIR

Reads the envelopes of SOURCE (keyed by project), expands each into its events, keys each by
its series (project|type|name) and stamps it with its own event time, folds count, sum, min and
max into 1-minute tumbling windows (grace 30 s, closed per partition once its event time passes
a window's end plus the grace) and writes each final window to SINK, keyed
`series|1m|<start>` with `{"count", "sum", "min", "max", "dims", "emitted_at"}` as the worker
writes its windows. Prints `{"first_record": <epoch s>}` when the first envelope is processed.

The events are re-keyed in place (Quix's stream transform, as its `set_timestamp` is built),
not with `group_by`: a series belongs to one project, so its windows stay in the partition
(and state store) of its project, where its project's events and the closer arrive in order.
`group_by` would send every event through a repartition topic, and its windows in partitions
that no closer reaches would never close (BENCHMARKS.md, Peers).
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from typing import Any

from quixstreams import Application
from quixstreams.dataframe.windows import aggregations

from bench.peers.series import minute_key, series_events

GRACE_MS = 30_000


def main() -> None:
    bootstrap, source, sink, group, state_dir = sys.argv[1:6]
    app = Application(
        broker_address=bootstrap,
        consumer_group=group,
        auto_offset_reset="earliest",
        state_dir=state_dir,
        loglevel="WARNING",
    )
    sdf = app.dataframe(app.topic(source, key_deserializer="str", value_deserializer="json"))
    started: list[float] = []

    def expand(envelope: dict[str, Any]) -> list[tuple[str, str, float]]:
        if not started:
            started.append(time.time())
            print(json.dumps({"first_record": started[0]}), flush=True)
        return series_events(envelope)

    def by_series(item: Any, _key: Any, _timestamp: int, headers: Any) -> tuple[Any, Any, int, Any]:
        series, stamp, value = item
        return value, series, int(datetime.fromisoformat(stamp).timestamp() * 1000), headers

    def as_written(window: Any, series: Any, _timestamp: int, headers: Any) -> tuple[Any, Any, int, Any]:
        value = {
            "count": window["count"],
            "sum": window["sum"],
            "min": window["min"],
            "max": window["max"],
            "dims": {},
            "emitted_at": datetime.now(UTC).isoformat(),
        }
        # Written at the time of writing (Quix would stamp the window's start), as the worker does.
        return value, minute_key(series, window["start"] / 1000), int(time.time() * 1000), headers

    sdf = sdf.apply(expand, expand=True)
    sdf = sdf.__dataframe_clone__(stream=sdf.stream.add_transform(by_series))
    sdf = (
        sdf.tumbling_window(duration_ms=60_000, grace_ms=GRACE_MS)
        .agg(
            count=aggregations.Count(),
            sum=aggregations.Sum(),
            min=aggregations.Min(),
            max=aggregations.Max(),
        )
        .final(closing_strategy="partition")
    )
    sdf = sdf.__dataframe_clone__(stream=sdf.stream.add_transform(as_written))
    sdf.to_topic(app.topic(sink, key_serializer="str", value_serializer="json"))
    app.run()


if __name__ == "__main__":
    main()
