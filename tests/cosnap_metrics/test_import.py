"""`cosnap-metrics import` on real Apache Kafka and chDB: NDJSON, gzip NDJSON and CSV files go
through the ingest API into `metrics.events` with exactly their values; importing a file again
adds nothing; rejects are counted by reason and written out; Ctrl-C and a re-run resume without
posting any event twice; 429s are waited out."""

from __future__ import annotations

import csv
import gzip
import hashlib
import os
import random
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from cosnap_metrics.event_files import EventFile, EventFileError, csv_columns, csv_event
from tests.conftest import Pipeline, wait_for

CSV_FIELDS = [
    "type", "event_id", "timestamp", "user_id", "session_id", "source", "name", "amount", "currency",
    "funnel", "step", "step_index", "feature", "action", "metric", "value", "unit",
]  # fmt: skip
TAG_KEYS = ["route", "status", "plan"]


def backfill_events(n: int, seed: int, days: float = 3.0) -> list[dict[str, Any]]:
    """`n` events of the four types over the last `days`, a third of them without `event_id`."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    events = []
    for i in range(n):
        ts = now - timedelta(seconds=rng.uniform(120, days * 86400))
        event: dict[str, Any] = {
            "timestamp": ts.isoformat(timespec="milliseconds"),
            "user_id": f"u{rng.randint(1, 500)}",
        }
        if i % 3:
            event["event_id"] = f"bf-{seed}-{i}"
        kind = i % 4
        if kind == 0:
            amount = rng.choice(["9.99", "59.99", "1500", "4.5", "0.000000001"])
            event |= {"type": "revenue", "name": "subscription.renewal", "amount": amount, "currency": "EUR"}
            event["tags"] = {"plan": rng.choice(["monthly", "yearly"])}
        elif kind == 1:
            step = rng.randint(0, 3)
            event |= {"type": "conversion", "funnel": "checkout", "step": f"step{step}", "step_index": step}
        elif kind == 2:
            event |= {
                "type": "feature",
                "feature": "ai_effect.anime",
                "action": "applied",
                "source": "frontend",
            }
        else:
            value = round(rng.lognormvariate(4.7, 0.5), 3)
            event |= {"type": "performance", "metric": "api.latency", "value": value, "unit": "ms"}
            event["tags"] = {"route": "/api/effects/apply", "status": rng.choice(["200", "500"])}
        events.append(event)
    return events


def documented_id(line: int, event: dict[str, Any]) -> str:
    """The id docs/reference.md promises for an event without one, computed here on its own."""
    canonical = orjson.dumps(event, option=orjson.OPT_SORT_KEYS)
    return "imp-" + hashlib.sha256(f"{line}\n".encode() + canonical).hexdigest()[:40]


def write_ndjson(path: Path, lines: list[bytes], compress: bool = False) -> None:
    data = b"\n".join(lines) + b"\n"
    path.write_bytes(gzip.compress(data) if compress else data)


def write_csv(path: Path, events: list[dict[str, Any]], extra_rows: list[list[str]]) -> None:
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(CSV_FIELDS + [f"tags.{key}" for key in TAG_KEYS])
        for event in events:
            cells = ["" if event.get(f) is None else str(event[f]) for f in CSV_FIELDS]
            writer.writerow(cells + [event.get("tags", {}).get(key, "") for key in TAG_KEYS])
        for row in extra_rows:
            writer.writerow(row)


def import_command(pipeline: Pipeline, *args: str) -> list[str]:
    return [sys.executable, "-m", "cosnap_metrics.cli", "import", "--json", *args]


def run_import(pipeline: Pipeline, *args: str) -> tuple[int, list[dict[str, Any]], str]:
    done = subprocess.run(
        import_command(pipeline, *args), env=pipeline.env, capture_output=True, text=True, timeout=180
    )
    summaries = [orjson.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return done.returncode, summaries, done.stderr


def ingest_accepted(pipeline: Pipeline) -> int:
    """The ingest's own count of events it acknowledged (`/metrics`)."""
    text = httpx.get(f"{pipeline.ingest_url}/metrics").text
    found = re.search(r"^cosnap_ingest_events_accepted_total ([0-9.e+]+)$", text, re.M)
    return int(float(found.group(1))) if found else 0


def ingest_answers(pipeline: Pipeline, status: int) -> int:
    text = httpx.get(f"{pipeline.ingest_url}/metrics").text
    pattern = rf'^cosnap_ingest_requests_total\{{[^}}]*status="{status}"[^}}]*\}} ([0-9.e+]+)$'
    return sum(int(float(n)) for n in re.findall(pattern, text, re.M))


def sink_inserted(pipeline: Pipeline) -> int:
    """Rows the sink inserted into metrics.events (its `/metrics`)."""
    text = httpx.get(f"{pipeline.query_url}/metrics").text
    found = re.search(r'^cosnap_sink_rows_inserted_total\{table="events"\} ([0-9.e+]+)$', text, re.M)
    return int(float(found.group(1))) if found else 0


def stored_events(pipeline: Pipeline) -> dict[str, tuple[Any, ...]]:
    rows = pipeline.query(
        "SELECT event_id, type, toUnixTimestamp64Milli(timestamp), user_id, source, name, toString(amount),"
        " currency, funnel, step, step_index, feature, action, metric, value, unit, tags"
        " FROM metrics.events FINAL"
    )
    return {str(row[0]): tuple(row[1:]) for row in rows}


def expected_row(event: dict[str, Any]) -> tuple[Any, ...]:
    ms = int(datetime.fromisoformat(event["timestamp"]).timestamp() * 1000)
    amount = event.get("amount")
    return (
        event["type"], ms, event.get("user_id", ""), event.get("source", ""), event.get("name", ""),
        None if amount is None else str(Decimal(amount).normalize()), event.get("currency", ""),
        event.get("funnel", ""), event.get("step", ""), event.get("step_index"), event.get("feature", ""),
        event.get("action", ""), event.get("metric", ""), event.get("value"), event.get("unit", ""),
        event.get("tags", {}),
    )  # fmt: skip


def comparable(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A stored row with its amount as a normalised decimal string (ClickHouse prints `9.99`)."""
    amount = row[5]
    return (*row[:5], None if amount is None else str(Decimal(str(amount)).normalize()), *row[6:])


def expected_ids(lines: list[tuple[int, dict[str, Any]]]) -> dict[str, tuple[Any, ...]]:
    return {event.get("event_id") or documented_id(line, event): expected_row(event) for line, event in lines}


@pytest.mark.kafka
@pytest.mark.e2e
def test_files_are_imported_exactly_and_a_second_import_adds_nothing(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    # A tight rate limit, so that the import meets 429s and has to wait them out.
    pipeline.env = pipeline.env | {
        "COSNAP_RATE_LIMIT_EVENTS_PER_S": "1000",
        "COSNAP_RATE_LIMIT_BURST": "1000",
    }
    pipeline.start("sink", "ingest")
    (pipeline.data_dir / "dev-write-key").write_text(pipeline.write_key + "\n")  # the default key file
    old = (datetime.now(UTC) - timedelta(days=40)).isoformat()

    plain_events = backfill_events(1200, seed=1)
    plain_lines = [orjson.dumps(e) for e in plain_events]
    plain_lines[10:10] = [b'{"type": "feature", "feature": ', b""]  # line 11 is not JSON, line 12 blank
    plain_lines.insert(
        100, orjson.dumps({"type": "feature", "feature": "x", "action": "y", "timestamp": old})
    )
    plain_lines.insert(200, orjson.dumps(plain_events[0] | {"event_id": "bad-currency", "currency": "XXZ"}))
    plain = tmp_path / "plain.ndjson"
    write_ndjson(plain, plain_lines)

    gz_events = backfill_events(1000, seed=2)
    gz_lines = [orjson.dumps(e) for e in gz_events]
    gz_lines.insert(500, orjson.dumps({"type": "performance", "metric": "m", "value": 1, "unit": "h" * 33}))
    packed = tmp_path / "second.log"  # gzip recognised by its bytes, not its name
    write_ndjson(packed, gz_lines, compress=True)

    csv_events = backfill_events(600, seed=3)
    table = tmp_path / "third.csv"
    bad_value = (
        ["performance", "", csv_events[0]["timestamp"], "u1"] + [""] * 10 + ["api.latency", "abc", "ms"]
    )
    bad_value += [""] * len(TAG_KEYS)
    write_csv(table, csv_events, [["feature", "only three", "cells"], bad_value])

    code, summaries, stderr = run_import(pipeline, str(plain), str(packed), str(table))
    assert code == 1, stderr  # some lines were rejected
    by_file = {Path(s["file"]).name: s for s in summaries}
    assert by_file["plain.ndjson"]["accepted"] == 1200
    assert by_file["plain.ndjson"]["rejected_by_reason"] == {
        "not valid JSON": 1,
        "timestamp too old": 1,
        "currency: Value error, currency must be an ISO 4217 code such as USD": 1,
    }
    assert by_file["second.log"]["accepted"] == 1000
    assert list(by_file["second.log"]["rejected_by_reason"].values()) == [1]
    assert by_file["third.csv"]["accepted"] == 600
    assert by_file["third.csv"]["rejected"] == 2
    assert sum(s["retries"] for s in summaries) > 0 and ingest_answers(pipeline, 429) > 0

    # The rejected lines, each with its line number and reason.
    rejected = [
        orjson.loads(line) for line in (tmp_path / "plain.ndjson.rejected.ndjson").read_bytes().splitlines()
    ]
    rejected.sort(key=lambda r: int(r["line"]))  # written as batches are answered
    assert [(r["line"], r["reason"]) for r in rejected] == [
        (11, "not valid JSON"),
        (101, "timestamp too old"),
        (201, "currency: Value error, currency must be an ISO 4217 code such as USD"),
    ]
    assert rejected[0]["raw"] == '{"type": "feature", "feature": '
    assert rejected[2]["event"]["event_id"] == "bad-currency"
    (gz_reject,) = (tmp_path / "second.log.rejected.ndjson").read_bytes().splitlines()
    assert orjson.loads(gz_reject)["line"] == 501 and "unit" in orjson.loads(gz_reject)["reason"]
    csv_rejects = [
        orjson.loads(line) for line in (tmp_path / "third.csv.rejected.ndjson").read_bytes().splitlines()
    ]
    csv_rejects.sort(key=lambda r: int(r["line"]))
    assert [r["line"] for r in csv_rejects] == [602, 603]
    assert csv_rejects[0]["reason"] == "wrong number of fields"
    assert csv_rejects[1]["reason"].startswith("value")

    # Every accepted event is in metrics.events, with exactly the values of its line.
    numbered_plain = [(n, orjson.loads(raw)) for n, raw in enumerate(plain_lines, 1) if raw and n != 11]
    expected = expected_ids([(n, e) for n, e in numbered_plain if e.get("timestamp") != old])
    expected.pop("bad-currency")
    expected |= expected_ids([(n, orjson.loads(raw)) for n, raw in enumerate(gz_lines, 1) if n != 501])
    expected |= expected_ids(list(enumerate(csv_events, 2)))  # the header is line 1
    assert len(expected) == 2800
    assert wait_for(lambda: pipeline.query("SELECT count() FROM metrics.events FINAL") == [[2800]], 60), (
        pipeline.log("sink")
    )
    stored = stored_events(pipeline)
    assert {k: comparable(v) for k, v in stored.items()} == expected

    # The same files again: the saved state says they are done, nothing is posted.
    accepted_before = ingest_accepted(pipeline)
    inserted_before = sink_inserted(pipeline)
    assert inserted_before == 2800
    newest = "SELECT count(), toString(max(inserted_at)) FROM metrics.events"
    before = pipeline.query(newest)
    code, again, _ = run_import(pipeline, str(plain), str(packed), str(table))
    assert code == 1
    assert [(s["already_imported"], s["posted"], s["accepted"]) for s in again] == [
        (True, 0, 1200),
        (True, 0, 1000),
        (True, 0, 600),
    ]
    time.sleep(2)
    assert ingest_accepted(pipeline) == accepted_before
    assert sink_inserted(pipeline) == inserted_before
    assert pipeline.query(newest) == before  # not one row more

    # --restart posts every line again under the same ids: the API accepts them again, the sink
    # inserts them again, and the table keeps one row per event with the same values.
    code, restarted, _ = run_import(pipeline, "--restart", str(plain), str(packed), str(table))
    assert code == 1
    assert [s["posted"] for s in restarted] == [1202, 1001, 601]  # every event, the unreadable lines aside
    assert ingest_accepted(pipeline) == accepted_before + 2800
    assert wait_for(lambda: sink_inserted(pipeline) >= 5600, 60), pipeline.log("sink")
    assert pipeline.query("SELECT count() FROM metrics.events FINAL") == [[2800]]
    assert {k: comparable(v) for k, v in stored_events(pipeline).items()} == expected


@pytest.mark.kafka
@pytest.mark.e2e
def test_an_interrupted_import_resumes_without_posting_an_event_twice(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    pipeline.start("sink", "ingest")
    events = backfill_events(4000, seed=4)
    source = tmp_path / "big.ndjson.gz"
    write_ndjson(source, [orjson.dumps(e) for e in events], compress=True)
    key = tmp_path / "key"
    key.write_text(pipeline.write_key)
    args = ["--key-file", str(key), "--batch", "100", str(source)]

    first = subprocess.Popen(
        import_command(pipeline, "--max-rate", "1000", *args),
        env=pipeline.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert wait_for(lambda: ingest_accepted(pipeline) >= 800, 30, interval=0.05)
    first.send_signal(signal.SIGINT)
    out, err = first.communicate(timeout=60)
    assert first.returncode == 130, err
    (stopped,) = [orjson.loads(line) for line in out.splitlines()]
    assert stopped["interrupted"] and 800 <= stopped["accepted"] < 4000
    assert stopped["accepted"] == ingest_accepted(pipeline)  # what it counts is what the API took

    code, (resumed,), stderr = run_import(pipeline, *args)
    assert code == 0, stderr
    assert resumed["resumed_at_line"] == stopped["accepted"] + 1
    assert resumed["posted"] == 4000 - stopped["accepted"]
    assert resumed["accepted"] == 4000 and resumed["rejected"] == 0
    assert ingest_accepted(pipeline) == 4000  # no event was posted twice

    assert wait_for(lambda: pipeline.query("SELECT count() FROM metrics.events") == [[4000]], 60), (
        pipeline.log("sink")
    )
    time.sleep(1)
    assert pipeline.query("SELECT count() FROM metrics.events") == [[4000]]  # not one duplicate row
    expected = expected_ids(list(enumerate(events, 1)))
    assert {k: comparable(v) for k, v in stored_events(pipeline).items()} == expected


def test_csv_cells_map_to_event_fields(tmp_path: Path) -> None:
    columns = csv_columns(
        ["type", "value", "unit", "metric", "timestamp", "step_index", "tags.route"], tmp_path
    )
    row = ["performance", "12.50", "ms", "api.latency", "1732000000", "", "/x"]
    assert csv_event(columns, row) == {
        "type": "performance",
        "value": 12.5,
        "unit": "ms",
        "metric": "api.latency",
        "timestamp": 1732000000,
        "tags": {"route": "/x"},
    }
    assert csv_event(columns, ["performance", "1e999", "", "", "2026-01-01T00:00:00Z", "2", ""]) == {
        "type": "performance",
        "value": "1e999",  # no finite number: the API rejects the text with its own reason
        "timestamp": "2026-01-01T00:00:00Z",
        "step_index": 2,
    }
    amount = csv_columns(["type", "amount", "currency"], tmp_path)
    assert csv_event(amount, ["revenue", "0.123456789", "USD"])["amount"] == "0.123456789"
    for header in (["type", "price"], ["type", "tags"], ["type", "tags.bad key"], ["name"], ["type", "type"]):
        with pytest.raises(EventFileError):
            csv_columns(header, tmp_path)


def test_the_same_event_gets_the_same_id_whatever_the_file(tmp_path: Path) -> None:
    event = {"type": "feature", "feature": "share", "action": "clicked", "timestamp": "2026-01-01T00:00:00Z"}
    write_ndjson(tmp_path / "a.ndjson", [orjson.dumps(event)] * 2)
    write_ndjson(tmp_path / "b.gz", [orjson.dumps(event)] * 2, compress=True)
    ids = []
    for name in ("a.ndjson", "b.gz"):
        source = EventFile(tmp_path / name)
        ids.append([record.event["event_id"] for record in source.records()])
        source.close()
    assert ids[0] == ids[1] == [documented_id(1, event), documented_id(2, event)]
    assert ids[0][0] != ids[0][1]  # two identical lines are two events


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("type,price\nrevenue,9.99\n")
    good = tmp_path / "good.ndjson"
    good.write_text('{"type":"feature","feature":"a","action":"b"}\n')
    base = [
        sys.executable,
        "-m",
        "cosnap_metrics.cli",
        "import",
        "--url",
        "http://127.0.0.1:9",
        "--key",
        "cmk_x",
    ]
    env = {"COSNAP_DATA_DIR": str(tmp_path / "data")}
    for argv, message in [
        ([str(bad)], "'price' are not event fields"),
        ([str(tmp_path / "missing.ndjson")], "no such file"),
        (["--rejected", str(tmp_path / "r"), str(good), str(good)], "one FILE"),
        (["--batch", "5000", str(good)], "not within 1-1000"),
    ]:
        done = subprocess.run(base + argv, capture_output=True, text=True, env=os.environ | env, timeout=60)
        assert done.returncode == 2, (argv, done.stderr)
        assert message in done.stderr, (argv, done.stderr)
    no_key = [sys.executable, "-m", "cosnap_metrics.cli", "import", str(good)]
    done = subprocess.run(no_key, capture_output=True, text=True, env=os.environ | env, timeout=60)
    assert done.returncode == 2 and "no write key" in done.stderr
