"""The Grafana provisioning of docker-compose: generated from sinks/panels.py, wired into the
compose file, and every panel query of the dashboard file run — macros expanded — against chDB
holding known events and alerts posted through the pipeline."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET  # noqa: S405 - parses the repository's own file
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from cosnap_metrics.broker import KafkaBroker
from sinks.errors import UnknownMacro
from sinks.grafana_dashboard import DASHBOARD_FILE, DATASOURCE, dashboard_json
from sinks.panels import PANELS, expand_macros
from tests.conftest import Pipeline
from tests.dashboard_data import (
    alert_records,
    dump,
    expected_panels,
    known_events,
    normalize,
    produce_alerts,
    wait_rows,
)

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "sinks" / "grafana"


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD_FILE.read_text())
    return loaded


def _datasource() -> dict[str, Any]:
    loaded = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "clickhouse.yaml").read_text())
    (source,) = loaded["datasources"]
    assert isinstance(source, dict)
    return source


def test_dashboard_file_is_generated_from_the_panels() -> None:
    assert DASHBOARD_FILE.read_text() == dashboard_json(), "stale: run cosnap-metrics dashboards export"
    panels = _dashboard()["panels"]
    assert [p["title"] for p in panels] == [p.title for p in PANELS]
    assert [t["rawSql"] for p in panels for t in p["targets"]] == [p.sql.strip() for p in PANELS]


def test_provisioning_is_consistent_with_the_dashboard_and_compose() -> None:
    source = _datasource()
    assert source["type"] == DATASOURCE["type"] and source["uid"] == DATASOURCE["uid"]
    for panel in _dashboard()["panels"]:
        assert panel["datasource"] == DATASOURCE
        assert all(target["datasource"] == DATASOURCE for target in panel["targets"])

    # The datasource logs in as the read-only user the ClickHouse server is given.
    users = ET.parse(GRAFANA / "clickhouse-users.xml").getroot()  # noqa: S314
    user = users.find(f"users/{source['jsonData']['username']}")
    assert user is not None
    password = user.find("password")  # from the environment: the operator's .env
    assert password is not None
    assert source["secureJsonData"]["password"] == f"${{{password.get('from_env')}}}"
    assert users.findtext(f"profiles/{user.findtext('profile')}/readonly") == "1"

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    grafana = compose["grafana"]
    assert re.fullmatch(r"grafana/grafana:\d+\.\d+\.\d+", grafana["image"])
    assert re.fullmatch(
        r"grafana-clickhouse-datasource \d+\.\d+\.\d+", grafana["environment"]["GF_INSTALL_PLUGINS"]
    )
    mounts = grafana["volumes"] + compose["clickhouse"]["volumes"]
    for mount in (m for m in mounts if m.startswith("./")):
        assert (ROOT / mount.split(":", 1)[0]).exists(), mount
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "cosnap.yaml").read_text())
    dashboards_dir = provider["providers"][0]["options"]["path"]
    assert f"./sinks/grafana/dashboards:{dashboards_dir}:ro" in grafana["volumes"]


def test_macros_expand_as_the_plugin_does() -> None:
    start = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    end = start + timedelta(hours=1)
    assert expand_macros("WHERE a = 1 AND $__timeFilter(timestamp)", start, end) == (
        "WHERE a = 1 AND timestamp >= toDateTime(1767323045) AND timestamp <= toDateTime(1767326645)"
    )
    with pytest.raises(UnknownMacro):
        expand_macros("SELECT $__interval_s", start, end)


@pytest.mark.kafka
def test_every_panel_query_returns_the_posted_numbers(pipeline: Pipeline, kafka: KafkaBroker) -> None:
    pipeline.start("sink", "ingest")
    now = datetime.now(UTC)
    events = known_events(now)
    pipeline.post(events)
    pipeline.post(events[:1])  # a client retry: the same event_id counts once
    alerts = alert_records(now, "cosnap-test")
    produce_alerts(kafka.bootstrap, pipeline.topics.alerts, alerts)
    wait_rows(pipeline, "events", len(events))
    wait_rows(pipeline, "alerts", len(alerts))

    expected = expected_panels(now, events, alerts)
    by_title = {p.title: p.key for p in PANELS}
    end = datetime.now(UTC)
    for panel in _dashboard()["panels"]:
        (target,) = panel["targets"]
        sql = expand_macros(target["rawSql"], end - timedelta(hours=1), end)
        assert "$" not in sql, sql
        want = expected[by_title[panel["title"]]]
        assert want, panel["title"]
        rows = normalize(pipeline.query(sql), want)
        assert rows == want, f"{panel['title']}\n{dump(rows)}\n!=\n{dump(want)}"
