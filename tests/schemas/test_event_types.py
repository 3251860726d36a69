"""Every place that defines the event types agrees with their table (schemas/event_types.py): the
pydantic models, the exported JSON Schemas, the worker's msgspec structs and the ClickHouse
columns. A new type, or a new field of one, that misses a place fails here."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import msgspec.inspect
import orjson
import pytest
from clickhouse_connect.driver.client import Client
from pydantic import BaseModel

from plumbing.clickhouse import connect
from schemas.event_types import EVENT_KINDS, EventKind
from schemas.events import Event, EventBase, EventType
from schemas.export import SCHEMA_DIR
from schemas.records import Envelope, StoredEvent
from sinks.clickhouse.ddl import apply_migrations
from sinks.clickhouse.rows import EVENT_COLUMNS, event_rows
from streams.envelope import EVENT_TYPES, WireEvent, decode
from streams.envelope import Event as StructEvent
from tests.sinks.clickhouse.test_retention import keep_forever

KINDS = list(EVENT_KINDS.values())
# One valid event of each type, as a client sends it.
SAMPLES: dict[str, dict[str, Any]] = {
    "revenue": {"type": "revenue", "name": "subscription.renewal", "amount": "9.99", "currency": "USD"},
    "conversion": {"type": "conversion", "funnel": "onboarding", "step": "signed_up", "step_index": 1,
                   "user_id": "u1"},
    "feature": {"type": "feature", "feature": "ai_effect.anime", "action": "applied"},
    "performance": {"type": "performance", "metric": "api.latency", "value": 12.5, "unit": "ms"},
}  # fmt: skip
STORED = {
    "event_id": "e1",
    "timestamp": "2026-11-26T12:00:00.000Z",
    "received_at": "2026-11-26T12:00:00.200Z",
    "request_id": "req-1",
}


def members(union: Any) -> set[Any]:
    """The classes of a discriminated union (`Annotated[A | B, Field(...)]`) or a plain one."""
    args = get_args(union)
    return set(get_args(args[0]) if len(args) == 2 and not isinstance(args[0], type) else args)


def stored_model(kind: EventKind) -> type[BaseModel]:
    models: list[type[BaseModel]] = [model for model in members(StoredEvent) if issubclass(model, kind.model)]
    [model] = models
    return model


def struct_of(kind: EventKind) -> type[WireEvent]:
    [struct] = [struct for struct in EVENT_TYPES if struct.kind == kind.type]
    return struct


def schema(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SCHEMA_DIR / name).read_text())
    return loaded


def test_the_table_has_every_type_once() -> None:
    assert list(EVENT_KINDS) == [kind.type for kind in KINDS]
    assert set(EVENT_KINDS) == set(get_args(EventType))
    assert set(SAMPLES) == set(EVENT_KINDS), "add a sample event of the new type to SAMPLES"


@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.type)
def test_the_table_names_fields_of_the_model(kind: EventKind) -> None:
    fields = kind.model.model_fields
    assert get_args(fields["type"].annotation) == (kind.type,)
    assert kind.name and len(kind.key) == 2, "the worker finds a series by two fields"
    assert kind.dimension is None or kind.currency is None
    for field in (*kind.key, kind.value):
        if field is not None:
            assert field in kind.fields and fields[field].is_required(), field
    for field in kind.key:  # text: strings, or one of a few (a performance unit)
        annotation = fields[field].annotation
        assert annotation is str or (
            get_origin(annotation) is Literal and set(map(type, get_args(annotation))) == {str}
        )
    if kind.value is None:
        assert not kind.exact and not kind.sketched
    else:
        assert fields[kind.value].annotation is (Decimal if kind.exact else float)


def test_the_models_are_the_tables_types() -> None:
    assert members(Event) == {kind.model for kind in KINDS}
    assert {stored_model(kind) for kind in KINDS} == members(StoredEvent)
    for kind in KINDS:
        assert set(stored_model(kind).model_fields) == set(kind.model.model_fields) | set(STORED), kind.type


@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.type)
def test_the_json_schemas_have_every_type_and_field(kind: EventKind) -> None:
    required = {*kind.key, *([kind.value] if kind.value else []), "type"}
    for file, model in (("event.schema.json", kind.model), ("envelope.schema.json", stored_model(kind))):
        document = schema(file)
        union = document if file == "event.schema.json" else document["properties"]["events"]["items"]
        assert set(union["discriminator"]["mapping"]) == set(EVENT_KINDS), file
        assert union["discriminator"]["mapping"][kind.type] == f"#/$defs/{model.__name__}", file
        definition = document["$defs"][model.__name__]
        properties = set(definition["properties"]) - set(EventBase.model_fields) - set(STORED) - {"type"}
        assert properties == set(kind.fields), file
        assert required <= set(definition["required"]), file
    windows = schema("window-aggregate.schema.json")["properties"]["type"]["enum"]
    late = schema("late-events.schema.json")["$defs"]["LateSeries"]["properties"]["type"]["enum"]
    assert set(windows) == set(late) == set(EVENT_KINDS)


def test_the_worker_decodes_every_type() -> None:
    assert {struct.kind for struct in EVENT_TYPES} == set(EVENT_KINDS)
    assert set(get_args(StructEvent)) == set(EVENT_TYPES)
    for struct in EVENT_TYPES:
        assert struct.__struct_config__.tag == struct.kind


@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.type)
def test_the_worker_reads_what_the_table_names(kind: EventKind) -> None:
    struct = struct_of(kind)
    own = set(struct.__struct_fields__) - set(WireEvent.__struct_fields__)
    assert own <= set(kind.fields), "the worker reads a field no model has"
    assert {*kind.key, *([kind.value] if kind.value else [])} <= own
    if kind.value is not None:
        info = msgspec.inspect.type_info(struct)
        assert isinstance(info, msgspec.inspect.StructType)
        [value] = [field.type for field in info.fields if field.name == kind.value]
        wanted = msgspec.inspect.DecimalType if kind.exact else msgspec.inspect.FloatType
        assert isinstance(value, wanted)


@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.type)
def test_an_envelope_the_ingest_writes_reaches_the_worker_and_the_sink(kind: EventKind) -> None:
    event = stored_model(kind).model_validate(SAMPLES[kind.type] | STORED)
    value = orjson.dumps(
        {"v": 1, "project": "p", "events": [event.model_dump(mode="json", exclude_none=True)]}
    )
    Envelope.model_validate_json(value)

    [decoded] = decode(value).events
    assert type(decoded) is struct_of(kind)
    for field in (*kind.key, *([kind.value] if kind.value else [])):
        assert getattr(decoded, field) == getattr(event, field), field

    [row] = event_rows(value, 0, 7)
    assert set(orjson.loads(row)) <= set(EVENT_COLUMNS)


def test_the_event_columns_are_the_stored_fields() -> None:
    stored = {field for model in members(StoredEvent) for field in model.model_fields}
    assert set(EVENT_COLUMNS) == stored | {"project", "kafka_partition", "kafka_offset"}
    assert len(EVENT_COLUMNS) == len(set(EVENT_COLUMNS))


@pytest.fixture
def clickhouse(tmp_path: Path) -> Iterator[Client]:
    """chDB in this process with the migrations applied (closed after the test)."""
    chdb = connect(f"chdb://{tmp_path / 'clickhouse'}")
    apply_migrations(chdb, "metrics")
    keep_forever(chdb, "metrics")  # the events' dates are fixed
    yield chdb
    chdb.close()


def test_the_events_table_has_every_column(clickhouse: Client) -> None:
    described = clickhouse.query("DESCRIBE TABLE metrics.events").result_rows
    missing = set(EVENT_COLUMNS) - {row[0] for row in described}
    assert not missing, f"add a migration for {sorted(missing)}"
