"""The baseline of `python -m bench.sink`: the same rows inserted straight into chDB.

    python -m bench.sink.raw ROWS DATA_DIR [--batch 50000]

ROWS holds one row a line, as the sink builds them (sinks/clickhouse/rows.py, JSON). In a chDB
of its own in DATA_DIR, with the sink's migrations applied to two databases, this process turns
the rows into Python values of the table's column types (not timed), then times:

- `insert`: clickhouse-connect's `insert` of those values, column-oriented (its fastest form
  here), into `raw.events`, in batches of `--batch` rows, with the sink's insert settings (so
  `optimize_on_insert=0` counts for both);
- `json`: `raw_insert` of the JSON lines themselves (JSONEachRow, the sink's own settings) into
  `json.events`, in the same batches.

Prints one JSON line: the rows and each batch's seconds for both.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from plumbing.clickhouse import connect
from sinks.clickhouse.ddl import apply_migrations
from sinks.clickhouse.rows import EVENT_COLUMNS
from sinks.clickhouse.writer import INSERT_SETTINGS

Convert = Callable[[Any], Any]


def column_value(column_type: str) -> tuple[Convert | None, Any]:
    """How a JSON value becomes the Python value clickhouse-connect inserts into a column of this
    ClickHouse type, and the value of a row that lacks it (as JSONEachRow fills it in)."""
    nullable = column_type.startswith("Nullable(")
    inner = column_type[len("Nullable(") : -1] if nullable else column_type
    convert: Convert | None = None
    if inner.startswith("DateTime64"):
        convert = datetime.fromisoformat
    elif inner.startswith("Decimal"):
        convert = Decimal
    if nullable:
        missing: Any = None
    elif inner.startswith("Map("):
        missing = {}
    elif inner.endswith("String)") or inner == "String":
        missing = ""
    else:
        missing = 0
    return convert, missing


def to_columns(lines: list[bytes], types: dict[str, str], columns: list[str]) -> list[list[Any]]:
    """The rows' values, one list per column."""
    plans = [(column, *column_value(types[column])) for column in columns]
    out: list[list[Any]] = [[] for _ in columns]
    for line in lines:
        row = orjson.loads(line)
        for values, (column, convert, missing) in zip(out, plans, strict=True):
            value = row.get(column)
            if value is None:
                values.append(missing)
            else:
                values.append(convert(value) if convert is not None else value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("rows", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("--batch", type=int, default=50_000)
    args = parser.parse_args()

    lines = args.rows.read_bytes().splitlines()
    client = connect(f"chdb://{args.data.resolve()}")
    for database in ("raw", "json"):
        apply_migrations(client, database)
    described = client.query("DESCRIBE TABLE raw.events").result_rows
    columns = to_columns(lines, {row[0]: row[1] for row in described}, EVENT_COLUMNS)

    inserted: list[float] = []
    for low in range(0, len(lines), args.batch):
        began = time.perf_counter()
        block = [values[low : low + args.batch] for values in columns]
        client.insert(
            "raw.events", block, column_names=EVENT_COLUMNS, column_oriented=True, settings=INSERT_SETTINGS
        )
        inserted.append(time.perf_counter() - began)
    raw_json: list[float] = []
    for low in range(0, len(lines), args.batch):
        began = time.perf_counter()
        client.raw_insert(
            "json.events",
            EVENT_COLUMNS,
            insert_block=b"\n".join(lines[low : low + args.batch]),
            fmt="JSONEachRow",
            settings=INSERT_SETTINGS,
        )
        raw_json.append(time.perf_counter() - began)
    counts = [client.query(f"SELECT count() FROM {db}.events").result_rows[0][0] for db in ("raw", "json")]  # noqa: S608
    assert counts == [len(lines)] * 2, f"the tables hold {counts} rows, not {len(lines)}"
    print(orjson.dumps({"rows": len(lines), "insert": inserted, "json": raw_json}).decode(), flush=True)


if __name__ == "__main__":
    main()
