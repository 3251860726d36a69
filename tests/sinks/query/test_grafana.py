"""The Grafana provisioning of docker-compose: generated from sinks/query/panels.py, wired into the
compose file, and every panel query of the dashboard file run — macros expanded — against chDB
holding known events, late events and alerts posted through the pipeline. The late-events panel
also against rows of known delays."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET  # parses the repository's own file
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from cosnap_metrics.broker import KafkaBroker
from plumbing.clickhouse import connect
from plumbing.keys import DEFAULT_PROJECT, KeyStore
from schemas.settings import SinkSettings
from sinks.clickhouse.ddl import apply_migrations
from sinks.query.errors import UnknownMacro
from sinks.query.grafana_dashboard import DASHBOARD_FILE, DATASOURCE, dashboard_json
from sinks.query.panels import PANELS, expand_macros
from tests.conftest import Pipeline
from tests.sinks.query.dashboard_data import (
    alert_records,
    dump,
    expected_panels,
    late_rows,
    normalize,
    post_traffic,
    produce_alerts,
    wait_rows,
)
from tests.sinks.query.test_clickhouse_http import go_read

ROOT = Path(__file__).resolve().parents[3]
GRAFANA = ROOT / "sinks" / "query" / "grafana"


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
    assert f"./sinks/query/grafana/dashboards:{dashboards_dir}:ro" in grafana["volumes"]


def test_macros_expand_as_the_plugin_does() -> None:
    start = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    end = start + timedelta(hours=1)
    assert expand_macros("WHERE a = 1 AND $__timeFilter(timestamp)", start, end) == (
        "WHERE a = 1 AND timestamp >= toDateTime(1767323045) AND timestamp <= toDateTime(1767326645)"
    )
    with pytest.raises(UnknownMacro):
        expand_macros("SELECT $__interval_s", start, end)


@pytest.mark.kafka
def test_every_panel_query_returns_the_posted_numbers(
    pipeline: Pipeline, kafka: KafkaBroker, tmp_path: Path
) -> None:
    rules = tmp_path / "no-rules.yaml"
    rules.write_text("rules: []\n")  # the only alerts are the ones this test sends
    pipeline.env["COSNAP_RULES_FILE"] = str(rules)
    pipeline.start("sink", "streams", "ingest")
    traffic = post_traffic(pipeline)
    alerts = alert_records(traffic.now, "cosnap-test")
    produce_alerts(kafka.bootstrap, pipeline.topics.alerts, alerts)
    wait_rows(pipeline, "alerts", len(alerts))

    end = datetime.now(UTC)
    late = late_rows(traffic, end, "cosnap-test")
    expected = expected_panels(traffic.now, traffic.events, alerts, late)
    by_title = {p.title: p.key for p in PANELS}
    for panel in _dashboard()["panels"]:
        (target,) = panel["targets"]
        sql = expand_macros(target["rawSql"], end - timedelta(hours=1), end)
        assert "$" not in sql, sql
        want = expected[by_title[panel["title"]]]
        assert want, panel["title"]
        rows = normalize(pipeline.query(sql), want)
        assert rows == want, f"{panel['title']}\n{dump(rows)}\n!=\n{dump(want)}"

    # Grafana's plugin on the embedded store: its client (clickhouse-go over HTTP) through the
    # query service's ClickHouse interface, as the project, with a read key.
    read_key = KeyStore(pipeline.data_dir / "write-keys.json").create("cosnap-test", read=True)
    where = urlparse(pipeline.env["COSNAP_CLICKHOUSE_HTTP_URL"])
    statements = [
        expand_macros(p["targets"][0]["rawSql"], end - timedelta(hours=1), end)
        for p in _dashboard()["panels"]
    ]
    answers = go_read(where.port or 8123, "cosnap-test", read_key, statements)
    for panel, sql, answer in zip(_dashboard()["panels"], statements, answers, strict=True):
        assert "error" not in answer, (panel["title"], answer)
        direct = pipeline.query(sql)
        assert len(answer["rows"]) == len(direct), panel["title"]
        labels = [row[0] for row in direct]
        if all(isinstance(label, str) and not re.match(r"\d{4}-\d\d-\d\dT", label) for label in labels):
            assert [row[0] for row in answer["rows"]] == labels, panel["title"]


def test_the_embedded_datasource_reads_the_clickhouse_interface_with_the_dev_read_key() -> None:
    embedded = yaml.safe_load((GRAFANA / "embedded" / "datasources" / "clickhouse.yaml").read_text())
    (source,) = embedded["datasources"]
    assert source["type"] == DATASOURCE["type"] and source["uid"] == DATASOURCE["uid"]
    interface = urlparse(SinkSettings().clickhouse_http_url)
    assert (source["jsonData"]["host"], source["jsonData"]["port"]) == (interface.hostname, interface.port)
    assert source["jsonData"]["protocol"] == "http"
    assert source["jsonData"]["username"] == DEFAULT_PROJECT  # the project of .cosnap-data/dev-read-key
    assert source["secureJsonData"]["password"] == "${COSNAP_READ_KEY}"  # noqa: S105 - a variable's name


def test_late_events_panel_counts_and_delays(tmp_path: Path) -> None:
    """The late-events panel's SQL on chDB rows of known delays: per project, the events read in
    the time range (by when the worker read them, whatever their event time), those counted, and
    the p50 (rank floor(0.5 n)) and maximum delay."""
    client = connect(f"chdb://{tmp_path / 'clickhouse'}")
    try:
        apply_migrations(client, "metrics")
        now = datetime.now(UTC).replace(microsecond=0)
        delays = {  # project -> (delay s, counted, read minutes ago)
            "app": [(12.5, 1, 1), (300.0, 1, 2), (2400.0, 0, 3), (93600.0, 1, 4), (5.0, 1, 90)],
            "web": [(61.0, 1, 10)],
        }
        rows = [
            {
                "project": project, "event_id": f"{project}-{n}", "type": "feature", "name": "share",
                "series_id": "s", "timestamp": (read - timedelta(seconds=delay)).isoformat(),
                "received_at": read.isoformat(), "folded_at": read.isoformat(), "delay_s": delay,
                "counted": counted, "kafka_partition": 0, "kafka_offset": n,
            }
            for project, events in delays.items()
            for n, (delay, counted, ago) in enumerate(events)
            for read in [now - timedelta(minutes=ago)]
        ]  # fmt: skip
        lines = "\n".join(json.dumps(row) for row in rows)
        client.command(f"INSERT INTO metrics.late_events FORMAT JSONEachRow {lines}")
        client.command(f"INSERT INTO metrics.late_events FORMAT JSONEachRow {lines}")  # a replay
        (panel,) = [p for p in PANELS if p.key == "late_events"]
        result = client.query(expand_macros(panel.sql, now - timedelta(hours=1), now))
        assert list(result.column_names) == [
            "project", "late_events", "counted_events", "counted_share", "p50_delay_s", "max_delay_s"
        ]  # fmt: skip
        # "app": four read within the hour (the fifth 90 minutes ago), three of them counted.
        assert result.result_rows == [("app", 4, 3, 0.75, 2400.0, 93600.0), ("web", 1, 1, 1.0, 61.0, 61.0)]
    finally:
        client.close()
