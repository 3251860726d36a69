"""The log formats of the services: one JSON object per line with the record's context, or text."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

from plumbing.logs import JsonFormatter, TextFormatter


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
