"""docker-compose.yml cannot start here (no Docker engine), so its consistency with the
embedded path is checked: pinned images, the same Kafka version, known settings only, real
CLI commands, and every pipeline service built from this repository's image."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from cosnap_metrics.cli import build_parser
from schemas.settings import RunnerSettings

ROOT = Path(__file__).resolve().parents[1]


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def test_images_are_pinned_and_kafka_matches_the_embedded_broker() -> None:
    services = _compose()["services"]
    for name, service in services.items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), name
    assert services["kafka"]["image"] == f"apache/kafka:{RunnerSettings().kafka_version}"


def test_pipeline_services_use_known_settings_and_commands() -> None:
    services = _compose()["services"]
    known = {f"COSNAP_{field.upper()}" for field in RunnerSettings.model_fields}
    commands = set(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    pipeline = {name: s for name, s in services.items() if s.get("build") == "."}
    assert set(pipeline) == {"topics", "sink", "streams", "ingest", "notify"}
    for name, service in pipeline.items():
        assert set(service["environment"]) <= known, name
        assert service["command"][0] in commands, name
        assert service["environment"]["COSNAP_CLICKHOUSE_URL"].startswith("http://")


def test_the_alertmanager_of_compose_is_the_tested_version_with_a_valid_config() -> None:
    services = _compose()["services"]
    debian = subprocess.run(
        ["prometheus-alertmanager", "--version"], capture_output=True, text=True, check=True
    )
    tested = re.search(r"version (\d+\.\d+\.\d+)", debian.stdout + debian.stderr)
    assert tested is not None
    assert services["alertmanager"]["image"] == f"prom/alertmanager:v{tested[1]}"
    assert services["notify"]["environment"]["COSNAP_ALERTMANAGER_URL"] == "http://alertmanager:9093"
    config = ROOT / "sinks" / "alertmanager" / "alertmanager.yml"
    check = subprocess.run(
        ["amtool", "check-config", str(config)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
