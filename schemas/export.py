"""The JSON Schema files of the public contract, generated from the models.

`cosnap-metrics schemas export` writes them to `schemas/json/`; a test fails when the files
in the repository differ from what the models produce, so they never drift.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter

from schemas.events import ErrorResponse, Event, EventBatch, IngestResponse
from schemas.guide import GuideMetricsDoc
from schemas.health import DetailedHealth, ServiceHealthAnswer
from schemas.records import (
    AlertAck,
    AlertDelivery,
    AlertRecord,
    DeadLetter,
    Envelope,
    LateEvents,
    WindowAggregate,
)
from schemas.rules import RuleFile

SCHEMA_DIR = Path(__file__).parent / "json"
_BASE = "https://cosnap.ai/schemas/metrics/"


def json_schemas() -> dict[str, dict[str, Any]]:
    """File name -> JSON Schema, for every record that crosses a process boundary."""
    sources: dict[str, tuple[str, type[BaseModel] | TypeAdapter[Any]]] = {
        "event.schema.json": ("One event of POST /v1/events", TypeAdapter[Any](Event)),
        "event-batch.schema.json": ("A batch body of POST /v1/events", EventBatch),
        "ingest-response.schema.json": ("The 202/400 body of POST /v1/events", IngestResponse),
        "error-response.schema.json": ("A refused request (4xx, 503)", ErrorResponse),
        "guide-metrics.schema.json": (
            "The body of POST /api/analytics/metrics (the monitoring guide's format)",
            GuideMetricsDoc,
        ),
        "envelope.schema.json": ("A record of metrics.events.v1", Envelope),
        "window-aggregate.schema.json": ("A record of metrics.aggregates.v1", WindowAggregate),
        "dead-letter.schema.json": ("A record of metrics.dead-letter.v1", DeadLetter),
        "late-events.schema.json": ("A record of metrics.internal.late (internal)", LateEvents),
        "alert.schema.json": ("A record of metrics.alerts.v1", AlertRecord),
        "alert-delivery.schema.json": ("A record of metrics.alert-deliveries.v1", AlertDelivery),
        "alert-ack.schema.json": ("A record of metrics.alert-acks.v1", AlertAck),
        "rules.schema.json": ("An alert rules file (YAML), see schemas/default-rules.yaml", RuleFile),
        "health-detailed.schema.json": ("The body of the ingest API's GET /health/detailed", DetailedHealth),
        "service-health.schema.json": (
            "GET /health of the sink, streams worker and notifier",
            ServiceHealthAnswer,
        ),
    }
    out = {}
    for name, (title, source) in sources.items():
        schema = source.json_schema() if isinstance(source, TypeAdapter) else source.model_json_schema()
        out[name] = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": _BASE + name} | schema
        out[name].setdefault("description", title)
    return out


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def export(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Write every schema file; return the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in json_schemas().items():
        path = directory / name
        path.write_text(render(schema))
        written.append(path)
    return written
