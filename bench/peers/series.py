"""What the peers of `python -m bench.peers` aggregate: each event's series and value, as the
raw loop of bench/streams names them. Standard library only: Quix's virtualenv imports it too."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def series_events(envelope: dict[str, Any]) -> list[tuple[str, str, float]]:
    """(series `project;type;name`, timestamp as written, value) of every event of an envelope:
    a performance event's value, a revenue event's amount, 1 for the others."""
    project = envelope["project"]
    out = []
    for event in envelope["events"]:
        kind = event["type"]
        if kind == "performance":
            name, value = event["metric"], event["value"]
        elif kind == "feature":
            name, value = event["feature"], 1
        elif kind == "conversion":
            name, value = f"{event['funnel']}:{event['step']}", 1
        else:
            name, value = event["name"], float(event["amount"])
        out.append((f"{project};{kind};{name}", event["timestamp"], value))
    return out


def minute_key(series: str, start_s: float) -> str:
    """The key the worker writes a minute window under: `series|1m|<start, ISO 8601 UTC>`."""
    start = datetime.fromtimestamp(start_s, UTC).isoformat().replace("+00:00", "Z")
    return f"{series}|1m|{start}"
