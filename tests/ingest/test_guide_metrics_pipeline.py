"""The monitoring guide's `BusinessMetricsService` (tests/ingest/guide_node, plain Node 18+, no
packages) pointed at the ingest, as an app that follows the guide runs it: it posts its
`{"metrics": [...]}` bodies of the four shapes (defaults left out, metadata of every kind) to
`/api/analytics/metrics`, then every body once more. Through the real pipeline (Kafka, the
streams worker, the sink, chDB) every object is one row of `metrics.events` and counts once in
the worker's windows; the bodies sent again add nothing."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from tests.conftest import Pipeline, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.e2e]

SERVICE = Path(__file__).parent / "guide_node" / "business-metrics-service.mjs"
PER_TYPE = 30


def test_the_guides_service_lands_every_event_once(pipeline: Pipeline) -> None:
    node = shutil.which("node")
    assert node is not None, "Node.js 18+ is needed (the Makefile checks for it)"
    pipeline.start("sink", "streams", "ingest")

    run = subprocess.run(
        [node, str(SERVICE), pipeline.ingest_url, pipeline.write_key, str(PER_TYPE)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, f"{run.stderr}\ningest:\n{pipeline.log('ingest')}"
    sent = json.loads(run.stdout)
    assert set(sent["statuses"]) == {202}, sent
    assert all(answer["rejected"] == [] for answer in sent["answers"]), sent["answers"]
    accepted = sum(answer["accepted"] for answer in sent["answers"])
    assert accepted == 2 * 4 * PER_TYPE  # every object accepted, twice

    expected = {"revenue": PER_TYPE, "conversion": PER_TYPE, "feature": PER_TYPE, "performance": PER_TYPE}

    def stored() -> dict[str, int]:
        rows = pipeline.query("SELECT type, count() FROM metrics.events FINAL GROUP BY type")
        return {str(row[0]): int(str(row[1])) for row in rows}

    assert wait_for(lambda: stored() == expected, timeout=60), (stored(), pipeline.log("sink"))
    [[unique, ids]] = pipeline.query(
        "SELECT uniqExact(event_id), countIf(startsWith(event_id, 'gm-')) FROM metrics.events FINAL"
    )
    assert (unique, ids) == (4 * PER_TYPE, 4 * PER_TYPE)  # ids derived from the objects

    revenue = pipeline.query(
        "SELECT name, currency, count(), toString(sum(amount)), any(tags['plan']) FROM metrics.events FINAL "
        "WHERE type = 'revenue' GROUP BY name, currency ORDER BY name"
    )
    half = PER_TYPE // 2
    assert [(r[0], r[1], r[2], Decimal(str(r[3])), r[4]) for r in revenue] == [
        ("credits_pack", "USD", half, Decimal("4.5") * half, "free"),  # currency left out: USD
        ("subscription", "EUR", half, Decimal("9.99") * half, "pro"),
    ]
    units = pipeline.query(
        "SELECT metric, unit, count() FROM metrics.events FINAL WHERE type = 'performance' "
        "GROUP BY metric, unit ORDER BY metric"
    )
    assert units == [["ai.generation", "ms", half], ["render.rate", "ms", half]]  # milliseconds; default ms
    conversion = pipeline.query(
        "SELECT funnel, uniqExact(step), uniqExact(user_id), countIf(tags['source'] = 'web') "
        "FROM metrics.events FINAL WHERE type = 'conversion' GROUP BY funnel"
    )
    assert conversion == [["default", 3, 7, PER_TYPE]]
    feature = pipeline.query(
        "SELECT feature, action, countIf(tags['style'] = 'ghibli' AND NOT mapContains(tags, 'nested')) "
        "FROM metrics.events FINAL WHERE type = 'feature' GROUP BY feature, action"
    )
    assert feature == [["ai_effect.anime", "applied", PER_TYPE]]

    # The worker counted each event once, the bodies sent again included: its 10-second windows
    # (final once the watermark passes them) hold every event of each type once.
    def windowed() -> dict[str, int]:
        rows = pipeline.query(
            "SELECT type, sum(count) FROM metrics.windows WHERE granularity = '10s' GROUP BY type"
        )
        return {str(row[0]): int(str(row[1])) for row in rows}

    assert wait_for(lambda: windowed() == expected, timeout=90), (windowed(), pipeline.log("streams"))

    # The nested metadata of each feature object was dropped and counted, on both posts.
    text = httpx.get(f"{pipeline.ingest_url}/metrics", timeout=30).text
    nested = re.search(
        r'^cosnap_ingest_guide_dropped_total\{reason="nested_value"\} (\S+)$', text, flags=re.M
    )
    assert nested is not None and float(nested.group(1)) == 2 * PER_TYPE
