"""The log formats of the services: one JSON object per line with the record's context, or text;
under the runner, every line in the service's file and only what a person should read on the
console."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

from plumbing.logs import ConsoleFilter, ConsoleFormatter, JsonFormatter, TextFormatter


def record(**extra: object) -> logging.LogRecord:
    made = logging.getLogger("cosnap.sink").makeRecord(
        "cosnap.sink", logging.ERROR, __file__, 1, "undecodable record %s[%d]", ("t", 2), None, extra=extra
    )
    made.created = 1_790_000_000.1234
    return made


def test_a_json_line_holds_the_base_fields_and_the_context_of_the_call() -> None:
    try:
        raise ValueError("not json\nat all")
    except ValueError:
        failing = record(partition=2, offset=17, request_ids=["req-1"], path=Path("/x"))
        failing.exc_info = sys.exc_info()
    line = JsonFormatter("sink").format(failing)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed.pop("exception").endswith("ValueError: not json\nat all")
    assert parsed == {
        "timestamp": "2026-09-21T14:13:20.123Z",
        "level": "ERROR",
        "logger": "cosnap.sink",
        "message": "undecodable record t[2]",
        "service": "sink",
        "partition": 2,
        "offset": 17,
        "request_ids": ["req-1"],
        "path": "/x",  # what JSON cannot hold is written as its str()
    }


def test_context_cannot_replace_a_base_field_and_text_lines_end_with_it() -> None:
    assert json.loads(JsonFormatter("sink").format(record(service="other")))["service"] == "sink"
    text = TextFormatter().format(record(partition=2, request_ids=["req-1"]))
    assert text.endswith("ERROR cosnap.sink undecodable record t[2] partition=2 request_ids=['req-1']")


def test_a_service_writes_json_lines_even_for_warnings_and_a_crash(tmp_path: Path) -> None:
    script = (
        "import logging, warnings\n"
        "from plumbing.logs import configure_logging\n"
        "configure_logging('ingest', 'INFO', 'json')\n"
        "logging.getLogger('kafka.conn').info('connecting')\n"  # kafka-python's narration: off at INFO
        "logging.getLogger('cosnap.ingest').info('started', extra={'port': 8000})\n"
        "warnings.warn('deprecated thing', UserWarning)\n"
        "raise RuntimeError('boom')\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert run.returncode == 1
    lines = [json.loads(line) for line in run.stderr.splitlines()]
    assert [(line["level"], line["logger"]) for line in lines] == [
        ("INFO", "cosnap.ingest"),
        ("WARNING", "py.warnings"),
        ("CRITICAL", "cosnap"),
    ]
    assert lines[0]["port"] == 8000
    assert "RuntimeError: boom" in lines[2]["exception"]


def test_under_the_runner_the_file_has_every_line_and_the_console_the_states_and_warnings(
    tmp_path: Path,
) -> None:
    script = (
        "import logging\n"
        "from pathlib import Path\n"
        "from plumbing.logs import CONSOLE, configure_logging\n"
        f"configure_logging('sink', 'INFO', 'json', Path({str(tmp_path)!r}))\n"
        "log = logging.getLogger('cosnap.sink')\n"
        "log.info('applied migrations')\n"  # a service's narration: the file only
        "log.info('Kafka reachable again', extra=CONSOLE)\n"  # a state change: the console too
        "for n in range(50):\n"
        "    logging.getLogger('aiokafka').error('Unable connect to node with id 1')\n"  # chatter
        "    log.warning('poll failed: %d', n)\n"  # the same kind of line: once a minute
        "log.error('stopped with 3 rows not inserted')\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stderr.splitlines() == [
        "[sink] Kafka reachable again",
        "[sink] WARNING poll failed: 0",
        "[sink] ERROR stopped with 3 rows not inserted",
    ]
    lines = [json.loads(line) for line in (tmp_path / "sink.jsonl").read_text().splitlines()]
    assert len(lines) == 103 and lines[0]["message"] == "applied migrations"
    assert "_console" not in lines[1] and "_held_back" not in lines[3]


def test_a_kind_of_line_held_back_is_counted_on_the_next_one_shown() -> None:
    shown = ConsoleFilter(repeat_s=0.2)
    assert shown.filter(record()) and not shown.filter(record()) and not shown.filter(record())
    time.sleep(0.25)
    again = record()
    assert shown.filter(again)
    line = ConsoleFormatter("sink", Path("logs/sink.jsonl")).format(again)
    assert line == "[sink] ERROR undecodable record t[2] (2 more like it in the last 0 s)"
    assert not shown.filter(
        logging.getLogger("kafka").makeRecord("kafka", logging.ERROR, "", 1, "x", (), None)
    )
