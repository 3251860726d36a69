"""The JavaScript SDK (sdk/js) against the real ingest API, Kafka and chDB.

`node --test` runs the SDK's own suite with COSNAP_INGEST_URL and COSNAP_WRITE_KEY set, so its
real-API test (sdk/js/test/ingest.test.mjs) posts through the module; the rows it sent must then
be in `metrics.events`, once each.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from decimal import Decimal
from pathlib import Path

import pytest

from tests.conftest import Pipeline

ROOT = Path(__file__).resolve().parents[2]
SDK_TESTS = ROOT / "sdk" / "js" / "test"
# ingest.test.mjs: 10 events of each of the four types through the client, plus 1 beacon;
# guide-ingest.test.mjs: one of each type through the monitoring guide's calls.
EXPECTED_BY_TYPE = {"revenue": 11, "conversion": 11, "feature": 12, "performance": 11}
EXPECTED_EVENTS = sum(EXPECTED_BY_TYPE.values())

pytestmark = pytest.mark.kafka


def _summary(output: str, name: str) -> int:
    """A count from node's test summary: `# fail 0` (TAP) or `ℹ fail 0` (spec reporter)."""
    found = re.findall(rf"^(?:#|ℹ) {name} (\d+)$", output, flags=re.MULTILINE)
    assert found, f"no '{name}' count in node's output:\n{output[-4000:]}"
    return int(found[-1])


def test_js_sdk_events_reach_clickhouse(pipeline: Pipeline) -> None:
    node = shutil.which("node")
    assert node is not None, "Node.js 18+ is needed (the Makefile checks for it)"
    pipeline.start("sink", "ingest")

    # Files, not the directory: `node --test <dir>` stopped searching directories in Node 21.
    files = sorted(str(path) for path in SDK_TESTS.glob("*.test.mjs"))
    env = pipeline.env | {"COSNAP_INGEST_URL": pipeline.ingest_url, "COSNAP_WRITE_KEY": pipeline.write_key}
    run = subprocess.run(
        [node, "--test", *files], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, f"node --test failed:\n{output[-8000:]}\ningest:\n{pipeline.log('ingest')}"
    assert _summary(output, "fail") == 0, output[-8000:]
    assert _summary(output, "skipped") == 0, "the real-API tests must run, not skip"
    assert _summary(output, "pass") > 0

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if pipeline.query("SELECT count() FROM metrics.events")[0][0] == EXPECTED_EVENTS:
            break
        time.sleep(0.25)
    time.sleep(1)  # a duplicate (a retried request) would land within the sink's 200 ms flush
    total, unique = pipeline.query("SELECT count(), uniqExact(event_id) FROM metrics.events")[0]
    assert (total, unique) == (EXPECTED_EVENTS, EXPECTED_EVENTS)

    rows = pipeline.query("SELECT type, count() FROM metrics.events GROUP BY type")
    by_type = {row[0]: row[1] for row in rows}
    assert by_type == EXPECTED_BY_TYPE
    revenue = pipeline.query(
        "SELECT currency, toString(sum(amount)) FROM metrics.events WHERE type = 'revenue' GROUP BY currency"
    )
    # 74.90 USD from ingest.test.mjs, 9.99 from the guide's trackRevenueEvent (USD by default)
    assert [(currency, Decimal(str(summed))) for currency, summed in revenue] == [("USD", Decimal("84.89"))]
    critical = pipeline.query("SELECT count() FROM metrics.events WHERE tags['severity'] = 'critical'")
    assert critical == [[2]]
    guide = pipeline.query(
        "SELECT type, funnel, step, user_id, metric, value, unit, tags['plan'] FROM metrics.events "
        "WHERE user_id = 'guide-user' OR unit = 'fps' OR tags['plan'] = 'pro' ORDER BY type"
    )
    assert guide == [
        ["conversion", "onboarding", "signup_completed", "guide-user", "", None, "", ""],
        ["feature", "", "", "guide-user", "", None, "", ""],
        ["performance", "", "", "", "render.rate", 58.5, "fps", ""],
        ["revenue", "", "", "", "", None, "", "pro"],
    ]
