"""The Grafana "executive" dashboard, generated from the panels of `sinks.query.panels`.

docker-compose provisions `sinks/query/grafana/dashboards/executive.json` (with the ClickHouse
datasource of `sinks/query/grafana/provisioning/`). `cosnap-metrics dashboards export` rewrites the
file from `PANELS`; a test fails when the file in the repository differs from what this module
produces, and runs every panel query of the file against chDB, so the Grafana dashboard and
the embedded one always show the same numbers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sinks.query.panels import PANELS, Panel

DASHBOARD_FILE = Path(__file__).parent / "grafana" / "dashboards" / "executive.json"
DASHBOARD_UID = "cosnap-executive"
DATASOURCE = {"type": "grafana-clickhouse-datasource", "uid": "cosnap-clickhouse"}
GRID_COLUMNS = 24
# The plugin's result formats (grafana-plugin-sdk-go sqlutil.FormatQueryOption).
_FORMAT_TIME_SERIES, _FORMAT_TABLE = 0, 1

_PERCENT = {"unit": "percentunit", "decimals": 1}
_FIELD_CONFIG: dict[str, dict[str, Any]] = {
    "revenue_by_currency": {
        # One stat per row, named by its currency.
        "defaults": {"displayName": "${__data.fields.currency}", "unit": "none", "decimals": 2},
        "overrides": [],
    },
    "revenue_per_minute": {
        "defaults": {"custom": {"drawStyle": "bars", "fillOpacity": 70, "lineWidth": 1}, "unit": "none"},
        "overrides": [],
    },
    "funnels": {
        "defaults": {},
        "overrides": [
            {
                "matcher": {"id": "byName", "options": name},
                "properties": [{"id": key, "value": value} for key, value in _PERCENT.items()],
            }
            for name in ("conversion", "step_conversion")
        ],
    },
    "late_events": {
        "defaults": {},
        "overrides": [
            {
                "matcher": {"id": "byName", "options": "counted_share"},
                "properties": [{"id": key, "value": value} for key, value in _PERCENT.items()],
            },
            *(
                {
                    "matcher": {"id": "byName", "options": name},
                    "properties": [{"id": "unit", "value": "s"}, {"id": "decimals", "value": 1}],
                }
                for name in ("p50_delay_s", "max_delay_s")
            ),
        ],
    },
    "alerting": {
        "defaults": {},
        "overrides": [
            *(
                {
                    "matcher": {"id": "byName", "options": name},
                    "properties": [{"id": "unit", "value": unit}],
                }
                for name, unit in (
                    ("delivery_pct", "percent"),
                    ("delivery_pct_target", "percent"),
                    ("noise_pct", "percent"),
                    ("noise_pct_target", "percent"),
                    ("detect_s", "s"),
                    ("mttr_s", "s"),
                    ("mttr_s_target", "s"),
                )
            ),
        ],
    },
}
_OPTIONS: dict[str, dict[str, Any]] = {
    "stat": {
        "reduceOptions": {"values": True, "calcs": [], "fields": "/^revenue$/"},
        "textMode": "value_and_name",
        "colorMode": "none",
        "graphMode": "none",
        "justifyMode": "auto",
        "orientation": "auto",
    },
    "timeseries": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}},
    "table": {"showHeader": True, "cellHeight": "sm"},
}


def _target(panel: Panel) -> dict[str, Any]:
    time_series = panel.grafana == "timeseries"
    return {
        "refId": "A",
        "datasource": DATASOURCE,
        "editorType": "sql",
        "queryType": "timeSeries" if time_series else "table",
        "format": _FORMAT_TIME_SERIES if time_series else _FORMAT_TABLE,
        "rawSql": panel.sql.strip(),
    }


def _panel(number: int, panel: Panel, grid: dict[str, int]) -> dict[str, Any]:
    return {
        "id": number,
        "type": panel.grafana,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": grid,
        "targets": [_target(panel)],
        "fieldConfig": _FIELD_CONFIG.get(panel.key, {"defaults": {}, "overrides": []}),
        "options": _OPTIONS[panel.grafana],
    }


def grafana_dashboard() -> dict[str, Any]:
    """The dashboard model: PANELS in order, laid out left to right in rows of 24 columns."""
    panels = []
    x = y = row_height = 0
    for number, panel in enumerate(PANELS, start=1):
        if x + panel.width > GRID_COLUMNS:
            x, y, row_height = 0, y + row_height, 0
        panels.append(_panel(number, panel, {"x": x, "y": y, "w": panel.width, "h": panel.height}))
        x += panel.width
        row_height = max(row_height, panel.height)
    return {
        "uid": DASHBOARD_UID,
        "title": "Cosnap executive",
        "description": "Revenue, funnels, features, latency, live alerts, late events and alerting measured",
        "tags": ["cosnap", "business"],
        "editable": False,
        "timezone": "browser",
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "schemaVersion": 39,
        "version": 1,
        "annotations": {"list": []},
        "templating": {"list": []},
        "panels": panels,
    }


def dashboard_json() -> str:
    return json.dumps(grafana_dashboard(), indent=2, ensure_ascii=False) + "\n"


def export(path: Path = DASHBOARD_FILE) -> Path:
    """Write the dashboard file; returns its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dashboard_json())
    return path
