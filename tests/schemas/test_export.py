"""The committed JSON Schema files are exactly what the models produce."""

from __future__ import annotations

from schemas.export import SCHEMA_DIR, json_schemas, render


def test_schema_files_are_current() -> None:
    expected = json_schemas()
    on_disk = {path.name for path in SCHEMA_DIR.glob("*.schema.json")}
    assert on_disk == set(expected), "run: cosnap-metrics schemas export"
    for name, schema in expected.items():
        assert (SCHEMA_DIR / name).read_text() == render(schema), (
            f"{name} is stale: run cosnap-metrics schemas export"
        )


def test_event_schema_names_the_four_types() -> None:
    event = json_schemas()["event.schema.json"]
    assert set(event["discriminator"]["mapping"]) == {"revenue", "conversion", "feature", "performance"}
