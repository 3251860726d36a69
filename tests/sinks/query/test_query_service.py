"""The read-only query path as an attacker meets it: `POST /v1/query` of a running sink and
`cosnap-metrics query`. Every statement of the guard's corpus is refused with 403 naming what,
and afterwards no table was created, no file written, and no response carried a byte of the
host file the attacks aimed at (issue 19, "Read-only means read-only")."""

# ruff: noqa: S608 - the SQL here is built on purpose: it is the attacks
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import Pipeline
from tests.sinks.query.test_query_guard import REFUSED

pytestmark = pytest.mark.kafka

MARKER = "host-file-5d1e0b"  # the content of the file the attacks try to read


def _post(pipeline: Pipeline, sql: str) -> httpx.Response:
    token = (pipeline.data_dir / "query-token").read_text().strip()
    return httpx.post(
        f"{pipeline.query_url}/v1/query",
        json={"sql": sql},
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )


def _attacks(host_file: Path, out_file: Path) -> list[str]:
    """The corpus of the guard's tests, and the same tricks aimed at this test's own files."""
    aimed = [
        f"SELECT '--'; SELECT * FROM file('{host_file}', 'LineAsString'); SELECT 1",
        f"SELECT * FROM file('{host_file}', 'LineAsString')",
        f"SELECT file('{host_file}')",
        f"SELECT 1 IN file('{host_file}', 'LineAsString')",
        f"SELECT toUInt8(line) FROM file('{host_file}', 'LineAsString')",
        f"DESC file('{host_file}', 'LineAsString')",
        f"SELECT * FROM `file`('{host_file}', 'LineAsString')",
        f"SELECT * FROM “file”('{host_file}', 'LineAsString')",
        f"SELECT * FROM \"fi\\x6ce\"('{host_file}', 'LineAsString')",
        f"SELECT \"'\"; SELECT * FROM file('{host_file}', 'LineAsString'); SELECT '\"'",
        f"SELECT 1 INTO OUTFILE '{out_file}' APPEND",
        f"SELECT 1 INTO OUTFILE '{out_file}' FORMAT CSV",
        f"SELECT '--' INTO OUTFILE '{out_file}'; SELECT 1",
        "SELECT '--'; CREATE TABLE metrics.x (a UInt8) ENGINE = Memory; SELECT 1",
        "SELECT `'`; CREATE TABLE metrics.x (a UInt8) ENGINE = Memory; SELECT '`'",
    ]
    return aimed + [sql for sql, _ in REFUSED if sql]  # an empty body is the API's 422


def test_every_attack_is_refused_and_changes_nothing(pipeline: Pipeline, tmp_path: Path) -> None:
    host_file, out_file = tmp_path / "host-file.txt", tmp_path / "written-by-a-read.txt"
    host_file.write_text(MARKER + "\n")
    pipeline.start("sink")
    tables_before = pipeline.query("SHOW TABLES FROM metrics")
    for sql in _attacks(host_file, out_file):
        response = _post(pipeline, sql)
        assert response.status_code == 403, (sql, response.text)
        body = response.json()
        assert body["error"] == "refused" and body["detail"].startswith("refused: "), (sql, body)
        assert MARKER not in response.text, sql
    assert pipeline.query("SHOW TABLES FROM metrics") == tables_before
    assert not out_file.exists()
    assert MARKER not in pipeline.log("sink")


def test_the_cli_refuses_the_exploits_of_issue_19(pipeline: Pipeline, tmp_path: Path) -> None:
    host_file, out_file = tmp_path / "host-file.txt", tmp_path / "written-by-a-read.txt"
    host_file.write_text(MARKER + "\n")
    pipeline.start("sink")
    several = "more than one statement"
    exploits = {
        "SELECT '--'; CREATE TABLE metrics.x (a UInt8) ENGINE = Memory; SELECT 1": several,
        f"SELECT '--'; SELECT * FROM file('{host_file}', 'LineAsString'); SELECT 1": several,
        f"SELECT 1 INTO OUTFILE '{out_file}' APPEND": "INTO OUTFILE",
    }

    def cli(sql: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cosnap_metrics.cli", "query", sql],
            env=pipeline.env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    for sql, named in exploits.items():
        done = cli(sql)
        assert done.returncode == 2 and named in done.stderr, (sql, done.stderr)
        assert MARKER not in done.stdout + done.stderr
    tables = cli("SHOW TABLES FROM metrics").stdout.split()[1:]
    assert tables == [str(row[0]) for row in pipeline.query("SHOW TABLES FROM metrics")] and "x" not in tables
    assert not out_file.exists()

    # With the pipeline stopped the CLI opens chDB itself, through the same guard and session.
    pipeline.stop("sink")
    for sql, named in exploits.items():
        done = cli(sql)
        assert done.returncode == 2 and named in done.stderr, (sql, done.stderr)
    readonly = cli("SELECT getSetting('readonly')")
    assert readonly.returncode == 0 and readonly.stdout.split()[-1] == "1", readonly.stderr
    assert "x" not in cli("SHOW TABLES FROM metrics").stdout.split()
    assert not out_file.exists()
