"""The JavaScript SDK with generated inputs (sdk/js/test/fuzz.test.mjs, node:test, a seeded
generator) against the real ingest API: good events accepted whatever their neighbours, no 5xx,
nothing sent twice, nothing left buffered."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Pipeline

ROOT = Path(__file__).resolve().parents[2]
FUZZ = ROOT / "sdk" / "js" / "test" / "fuzz.test.mjs"

pytestmark = pytest.mark.kafka


def _count(output: str, name: str) -> int:
    found = re.findall(rf"^(?:#|ℹ) {name} (\d+)$", output, flags=re.MULTILINE)
    assert found, f"no '{name}' count in node's output:\n{output[-4000:]}"
    return int(found[-1])


def test_js_sdk_generated_calls_on_the_real_api(pipeline: Pipeline) -> None:
    node = shutil.which("node")
    assert node is not None, "Node.js 18+ is needed (the Makefile checks for it)"
    pipeline.env |= {"COSNAP_RATE_LIMIT_EVENTS_PER_S": "0"}
    pipeline.start("ingest")
    env = pipeline.env | {
        "COSNAP_FUZZ_INGEST_URL": pipeline.ingest_url,
        "COSNAP_FUZZ_WRITE_KEY": pipeline.write_key,
    }
    run = subprocess.run(
        [node, "--test", str(FUZZ)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, f"node --test failed:\n{output[-8000:]}\ningest:\n{pipeline.log('ingest')}"
    assert _count(output, "fail") == 0
    assert _count(output, "pass") == 3, (
        "the generated calls, on the stand-in and on the real API, and the regression"
    )
    assert "generated calls on the real API" in output
