"""docker-compose.yml cannot start here (no Docker engine), so its consistency with the
embedded path is checked: pinned images, the same Kafka version, known settings only, real
CLI commands, and every pipeline service built from this repository's image. And that the
stack is closed by default: ports on loopback, no password in any file (each from the
operator's .env, which `cosnap-metrics compose-env` writes), ClickHouse users limited to the
stack's network, Grafana's user read-only (checked on ClickHouse's engine) on `metrics` only."""

from __future__ import annotations

import ipaddress
import json
import re
import stat
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from cosnap_metrics.alertmanager_config import CONFIG_NAME, TEMPLATE_DIR, write_config
from cosnap_metrics.cli import build_parser
from cosnap_metrics.compose_env import CLUSTER_NODES, COMPOSE_PASSWORDS
from cosnap_metrics.healthcheck import SERVICES, container_service
from schemas.settings import RunnerSettings

ROOT = Path(__file__).resolve().parents[1]
GRAFANA_DATASOURCE = ROOT / "sinks" / "query" / "grafana" / "provisioning" / "datasources" / "clickhouse.yaml"


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
    assert set(pipeline) == {
        "topics",
        "sink",
        "streams",
        "ingest",
        "notify",
        "validate",
        "alertmanager-config",
    }
    for name, service in pipeline.items():
        assert service["command"][0] in commands, name
        if name == "alertmanager-config":  # renders Alertmanager's configuration: the template's variables
            assert set(service["environment"]) <= set(template_variables()), name
            continue
        assert set(service["environment"]) <= known, name
        assert service["environment"]["COSNAP_CLICKHOUSE_URL"].startswith("http://")


def template_variables() -> list[str]:
    """The variables the shipped Alertmanager configuration template names."""
    return re.findall(r"\$\{([A-Z_0-9]+)", (TEMPLATE_DIR / CONFIG_NAME).read_text())


def test_every_service_has_a_healthcheck_and_the_image_checks_its_own_service() -> None:
    services = _compose()["services"]
    commands = set(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        if check.get("disable"):
            # Only a one-shot (it serves nothing) goes without: a client run by hand (a profile),
            # or a job the services that need it wait for to complete.
            awaited = any(
                other.get("depends_on", {}).get(name, {}).get("condition") == "service_completed_successfully"
                for other in services.values()
            )
            assert service["restart"] == "no" and (service.get("profiles") or awaited), name
            continue
        kind, *argv = check["test"]
        assert kind in ("CMD", "CMD-SHELL"), name
        if service.get("build") == ".":
            # The image's own command, naming the service the container runs.
            assert argv[:2] == ["cosnap-metrics", "healthcheck"] and argv[2] == service["command"][0], name
            assert "healthcheck" in commands and argv[2] in SERVICES
        else:
            assert "curl" not in " ".join(argv), f"{name}: its image has no curl"
    dockerfile = (ROOT / "Dockerfile").read_text()
    healthcheck = re.search(r"^HEALTHCHECK (?P<options>.*?)CMD (?P<cmd>\[[^\n]*\])$", dockerfile, re.M | re.S)
    assert healthcheck is not None, "the Dockerfile has no HEALTHCHECK"
    assert json.loads(healthcheck["cmd"]) == ["cosnap-metrics", "healthcheck"]  # process 1's service
    assert re.search(r"--start-period=\d+s", healthcheck["options"])


@pytest.mark.parametrize(
    ("cmdline", "service"),
    [
        ("/usr/local/bin/python\0/usr/local/bin/cosnap-metrics\0sink\0--log-format\0json\0", "sink"),
        ("cosnap-metrics\0ingest\0", "ingest"),
        ("cosnap-metrics\0validate\0--url\0http://ingest:8000\0", None),
        ("", None),
    ],
)
def test_the_healthcheck_finds_the_service_process_1_runs(
    tmp_path: Path, cmdline: str, service: str | None
) -> None:
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "cmdline").write_bytes(cmdline.encode())
    assert container_service(tmp_path) == service
    assert container_service(tmp_path / "absent") is None


def test_the_alertmanager_of_compose_is_the_tested_version_with_a_valid_config(tmp_path: Path) -> None:
    services = _compose()["services"]
    debian = subprocess.run(
        ["prometheus-alertmanager", "--version"], capture_output=True, text=True, check=True
    )
    tested = re.search(r"version (\d+\.\d+\.\d+)", debian.stdout + debian.stderr)
    assert tested is not None
    assert services["alertmanager"]["image"] == f"prom/alertmanager:v{tested[1]}"
    assert services["notify"]["environment"]["COSNAP_ALERTMANAGER_URL"] == "http://alertmanager:9093"
    # Alertmanager reads the shipped template as the one-shot job renders it from .env, the
    # channels without secrets left out (tests/sinks/notify/test_routing.py renders them all).
    job = services["alertmanager-config"]
    assert job["command"][:4] == ["alertmanager", "config", "--out", "/etc/alertmanager/alertmanager.yml"]
    assert {"COSNAP_SLACK_CRITICAL_URL", "COSNAP_PAGERDUTY_ROUTING_KEY"} <= set(job["environment"])
    assert "alertmanager-config:/etc/alertmanager:ro" in services["alertmanager"]["volumes"]
    assert services["alertmanager"]["depends_on"]["alertmanager-config"] == {
        "condition": "service_completed_successfully"
    }
    config = tmp_path / "alertmanager.yml"
    write_config(config, {})
    check = subprocess.run(
        ["amtool", "check-config", str(config)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr


# --- Closed by default: loopback ports, no password in the files, users limited by network ---

_REFERENCE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")
_SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN", re.IGNORECASE)
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}
USERS_DIR = "/etc/clickhouse-server/users.d/"


def interpolate(text: str, env: dict[str, str]) -> str:
    """`text` with docker compose's `${NAME}`, `${NAME:-default}` and `${NAME:?error}` resolved
    from `env`; ValueError for a required variable `env` lacks, as `docker compose` refuses it."""

    def resolve(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        value = env.get(name, "")
        if op in (":?", "?") and not value:
            raise ValueError(f"{name}: {arg}")
        if op in (":-", "-") and not value:
            return arg
        return value

    return _REFERENCE.sub(resolve, text)


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for item in value.values() for s in _strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return [str(value)]


def _clickhouse_users() -> dict[str, ET.Element]:
    """Every users file the compose mounts into the ClickHouse server, parsed."""
    mounts = _compose()["services"]["clickhouse"]["volumes"]
    files = [m.split(":")[0] for m in mounts if m.split(":")[1].startswith(USERS_DIR)]
    assert files, "the ClickHouse server gets its users from this repository"
    return {path: ET.parse(ROOT / path).getroot() for path in files}  # noqa: S314 - our own files


def _compose_subnet() -> ipaddress.IPv4Network:
    [pool] = _compose()["networks"]["default"]["ipam"]["config"]
    return ipaddress.IPv4Network(pool["subnet"])


def test_every_port_is_published_on_loopback_unless_the_operator_says_otherwise() -> None:
    published = []
    for name, service in _compose()["services"].items():
        for port in service.get("ports", []):
            if isinstance(port, dict):
                host = str(port.get("host_ip", ""))
            else:
                # host:published:target, the host part maybe `${VARIABLE:-default}`
                match = re.fullmatch(r"(?P<host>\$\{[^}]+\}|[^:]+):\d+:\d+(/\w+)?", str(port))
                assert match is not None, f"{name}: {port} is published on every address"
                host = match["host"]
            assert interpolate(host, {}) in _LOOPBACK, f"{name}: {port} is published beyond this machine"
            published.append(name)
    assert {"clickhouse", "ingest", "grafana", "alertmanager"} <= set(published)
    # The operator opens one by saying so in .env.
    port = _compose()["services"]["clickhouse"]["ports"][0]
    assert interpolate(port, {"COSNAP_BIND": "10.1.2.3"}).startswith("10.1.2.3:")


def test_no_password_is_written_in_the_compose_files() -> None:
    compose = _compose()
    text = (ROOT / "docker-compose.yml").read_text()
    for match in _REFERENCE.finditer(text):
        if _SECRET_NAME.search(match["name"]):
            # Required from .env, or an optional integration's secret whose default is nothing.
            required, optional = match["op"] == ":?", match["op"] == ":-" and not match["arg"]
            assert required or optional, f"{match[0]}: a password must come from .env, with no default"
    for name, service in compose["services"].items():
        environment = service.get("environment", {})
        for key, value in environment.items():
            if _SECRET_NAME.search(key):
                assert _REFERENCE.fullmatch(str(value)), f"{name}: {key} is written in the file"
        for value in _strings(environment):
            userinfo = urlsplit(value).password if "://" in value else None
            if userinfo is not None:
                assert _REFERENCE.fullmatch(userinfo), f"{name}: a password in {value}"
    for path, users in _clickhouse_users().items():
        for user in users.findall("users/*"):
            for element in user.iter():
                if element.tag.startswith("password"):
                    assert not (element.text or "").strip(), f"{path}: {user.tag} has a password written"
    datasource = yaml.safe_load(GRAFANA_DATASOURCE.read_text())["datasources"][0]
    assert _REFERENCE.fullmatch(datasource["secureJsonData"]["password"])


def test_clickhouse_users_log_in_from_the_stack_only_with_the_operators_passwords() -> None:
    subnet = _compose_subnet()
    clickhouse = _compose()["services"]["clickhouse"]
    assert clickhouse["environment"]["CLICKHOUSE_SKIP_USER_SETUP"] == 1  # no user of the image's own
    users = {user.tag: user for root in _clickhouse_users().values() for user in root.findall("users/*")}
    assert users.pop("default").get("remove") == "remove"  # the image's: no password, any network
    assert set(users) == {"cosnap", "grafana"}
    for name, user in users.items():
        password = user.find("password")
        assert password is not None and password.get("from_env"), name
        assert _REFERENCE.fullmatch(clickhouse["environment"][password.get("from_env")]), name
        assert user.findtext("access_management", "0") == "0", f"{name} may manage users"
        networks = user.find("networks")
        assert networks is not None and len(networks), f"{name}: any network"
        for allowed in networks:
            assert allowed.tag == "ip", f"{name}: {allowed.tag} (a DNS name) is no limit"
            network = ipaddress.ip_network(allowed.text or "", strict=False)
            local = network.is_loopback and network.num_addresses == 1
            inside = isinstance(network, ipaddress.IPv4Network) and network.subnet_of(subnet)
            assert local or inside, f"{name}: {allowed.text} is beyond the stack"
    # The pipeline's connection string names the user whose password it carries.
    url = urlsplit(interpolate(clickhouse_url(), {"CLICKHOUSE_PASSWORD": "p"}))
    assert (url.username, url.password) == ("cosnap", "p")


def clickhouse_url() -> str:
    url: str = _compose()["services"]["sink"]["environment"]["COSNAP_CLICKHOUSE_URL"]
    return url


def test_the_grafana_user_reads_the_metrics_database_and_nothing_else() -> None:
    users = _clickhouse_users()["./sinks/query/grafana/clickhouse-users.xml"]
    user = users.find("users/grafana")
    assert user is not None
    assert [q.text for q in user.findall("grants/query")] == ["GRANT SELECT ON metrics.*"]
    profile = users.find(f"profiles/{user.findtext('profile')}")
    assert profile is not None and profile.findtext("readonly") == "1"
    # Settings a query may still set under readonly=1: bounded, and never readonly or allow_ddl.
    changeable = {
        c.tag for c in profile.findall("constraints/*") if c.find("changeable_in_readonly") is not None
    }
    assert changeable <= {"max_execution_time", "enable_http_compression"}
    # Grafana logs in as that user, from the one address the user accepts.
    datasource = yaml.safe_load(GRAFANA_DATASOURCE.read_text())["datasources"][0]
    assert datasource["jsonData"]["username"] == "grafana"
    password = user.find("password")
    assert password is not None
    assert datasource["secureJsonData"]["password"] == f"${{{password.get('from_env')}}}"
    grafana = _compose()["services"]["grafana"]
    assert _REFERENCE.fullmatch(grafana["environment"][password.get("from_env")])
    assert [ip.text for ip in user.findall("networks/ip")] == [grafana["networks"]["default"]["ipv4_address"]]


_READONLY_PROBE = """
import json, sys
from chdb import session
settings = json.loads(sys.argv[1])
s = session.Session()
# Not the profile's: so that a probe the profile would let through fails at once instead of
# retrying a closed port.
for knob in ("http_max_tries", "connections_with_failover_max_tries", "connect_timeout_with_failover_ms"):
    s.query(f"SET {knob} = 1")
for name, value in sorted(settings.items(), key=lambda item: item[0] == "readonly"):
    s.query(f"SET {name} = {value}")
answers = {}
for sql in json.loads(sys.argv[2]):
    try:
        answers[sql] = "ok: " + str(s.query(sql)).strip()
    except Exception as exc:
        answers[sql] = "refused: " + str(exc)
print(json.dumps(answers))
"""


def test_the_grafana_profile_refuses_files_urls_remote_servers_and_writes_in_clickhouse(
    tmp_path: Path,
) -> None:
    """The profile's settings, set on a session of ClickHouse's own engine (chDB), as the server
    sets them on the grafana user's sessions."""
    users = _clickhouse_users()["./sinks/query/grafana/clickhouse-users.xml"]
    profile = users.find("profiles/grafana_readonly")
    assert profile is not None
    settings = {item.tag: item.text for item in profile if item.tag != "constraints"}
    secret = tmp_path / "secret.txt"
    secret.write_text("not for dashboards\n")
    refused = [
        f"SELECT * FROM file('{secret}', 'LineAsString')",  # noqa: S608 - a path of the test's own
        "SELECT * FROM url('http://127.0.0.1:9/metadata', 'LineAsString')",
        "SELECT * FROM remote('127.0.0.1:9', system.one)",
        "SET readonly = 0",
        "SELECT 1 SETTINGS readonly = 0",
        "CREATE TABLE t (a UInt8) ENGINE = Memory",
        "CREATE TEMPORARY TABLE t (a UInt8)",
    ]
    allowed = ["SELECT count() FROM numbers(3)"]
    probe = subprocess.run(
        [sys.executable, "-c", _READONLY_PROBE, json.dumps(settings), json.dumps(refused + allowed)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        cwd=tmp_path,
    )
    answers = json.loads(probe.stdout)
    for sql in refused:
        assert answers[sql].startswith("refused: ") and "READONLY" in answers[sql], (sql, answers[sql])
        assert "not for dashboards" not in answers[sql]
    assert answers[allowed[0]] == "ok: 3"


def test_compose_env_writes_every_password_the_compose_requires_privately_and_once(tmp_path: Path) -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    required = {m["name"] for m in _REFERENCE.finditer(text) if m["op"] == ":?"}
    with pytest.raises(ValueError, match="CLICKHOUSE"):
        interpolate(text, {})  # without .env, docker compose refuses to start
    env_file = tmp_path / ".env"

    def compose_env() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cosnap_metrics.cli", "compose-env", "--file", str(env_file)],
            capture_output=True,
            text=True,
            check=False,
        )

    assert compose_env().returncode == 0
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    written = env_file.read_text()
    env = dict(line.split("=", 1) for line in written.splitlines() if line and not line.startswith("#"))
    assert env.pop("COMPOSE_PROJECT_NAME") == "cosnap-metrics"
    assert set(env) == required == set(COMPOSE_PASSWORDS)
    assert len(set(env.values())) == len(env) and all(len(value) >= 43 for value in env.values())
    resolved = yaml.safe_load(interpolate(text, env))
    url = urlsplit(resolved["services"]["sink"]["environment"]["COSNAP_CLICKHOUSE_URL"])
    assert url.password == env["CLICKHOUSE_PASSWORD"]
    # Never overwritten: the passwords are in use in ClickHouse's and Grafana's volumes.
    again = compose_env()
    assert again.returncode == 1 and "exists" in again.stderr
    assert env_file.read_text() == written


# --- Prometheus: every component scraped, rules on the pipeline's own health; compose valid ---

PROMETHEUS = ROOT / "plumbing" / "prometheus"


def test_the_prometheus_of_compose_is_the_tested_version_scraping_every_component_with_valid_rules() -> None:
    services = _compose()["services"]
    debian = subprocess.run(["prometheus", "--version"], capture_output=True, text=True, check=True)
    tested = re.search(r"version (\d+\.\d+\.\d+)", debian.stdout + debian.stderr)
    assert tested is not None
    assert services["prometheus"]["image"] == f"prom/prometheus:v{tested[1]}"
    config = PROMETHEUS / "prometheus.yml"
    for command in (
        ["promtool", "check", "config", str(config)],
        ["promtool", "check", "rules", str(PROMETHEUS / "pipeline-rules.yml")],
        ["promtool", "test", "rules", str(PROMETHEUS / "pipeline-rules.test.yml")],
    ):
        check = subprocess.run(command, capture_output=True, text=True, check=False)
        assert check.returncode == 0, check.stdout + check.stderr
    settings = RunnerSettings()
    ports = {
        "ingest": settings.ingest_port,
        "streams": settings.streams_metrics_port,
        "sink": settings.sink_metrics_port,
        "notify": settings.notify_metrics_port,
    }
    scraped = {
        target
        for job in yaml.safe_load(config.read_text())["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    assert {f"{name}:{port}" for name, port in ports.items()} <= scraped
    assert all(services[name]["environment"]["COSNAP_METRICS_HOST"] == "0.0.0.0" for name in ports)  # noqa: S104
    # The rules use metric names the services really export.
    exported = set()
    for package in ("ingest", "streams", "sinks"):
        for source in (ROOT / package).rglob("*.py"):
            exported |= set(re.findall(r'"(cosnap_[a-z_]+)"', source.read_text()))
    used = set(re.findall(r"cosnap_[a-z_]+", (PROMETHEUS / "pipeline-rules.yml").read_text())) - {"cosnap_"}
    assert used and used <= exported, used - exported


def test_docker_compose_config_accepts_the_file_with_the_env_compose_env_writes(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    subprocess.run(
        [sys.executable, "-m", "cosnap_metrics.cli", "compose-env", "--file", str(env_file)], check=True
    )
    config = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "--env-file", str(env_file), "config"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert config.returncode == 0, config.stderr
    resolved = yaml.safe_load(config.stdout)
    assert {"prometheus", "validate", "notify"} <= set(resolved["services"])
    assert (
        resolved["services"]["notify"]["environment"]["COSNAP_VALIDATE_WEBHOOK_URL"]
        == "http://validate:8129/"
    )


def test_the_cluster_profile_makes_three_nodes_one_cluster_with_every_service_on_all_three(
    tmp_path: Path,
) -> None:
    env_file = tmp_path / ".env"
    cli = [sys.executable, "-m", "cosnap_metrics.cli"]
    subprocess.run([*cli, "compose-env", "--brokers", "3", "--file", str(env_file)], check=True)
    written = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if line[:1] != "#")
    assert written["COMPOSE_PROFILES"] == "cluster"
    compose = ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "--env-file", str(env_file)]
    for profile in ([], ["--profile", "cluster"]):
        config = subprocess.run(
            [*compose, *profile, "config"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert config.returncode == 0, config.stderr
    services = yaml.safe_load(config.stdout)["services"]
    nodes = {name: services[name] for name in CLUSTER_NODES}
    assert [services[name].get("profiles") for name in CLUSTER_NODES] == [None, ["cluster"], ["cluster"]]
    advertised = []
    for node_id, (name, node) in enumerate(nodes.items(), 1):
        env = node["environment"]
        assert node["image"] == services["kafka"]["image"]
        assert str(env["KAFKA_NODE_ID"]) == str(node_id)
        assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka:9093,2@kafka-2:9093,3@kafka-3:9093"
        assert str(env["KAFKA_DEFAULT_REPLICATION_FACTOR"]) == "3"
        assert str(env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]) == "3"
        assert str(env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"]) == "3"
        assert str(env["KAFKA_MIN_INSYNC_REPLICAS"]) == str(env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"]) == "2"
        assert env["KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE"] == "false"
        assert {volume.split(":")[0] for volume in node["volumes"]} == {f"{name}-data"}
        advertised.append(env["KAFKA_ADVERTISED_LISTENERS"].removeprefix("PLAINTEXT://"))
    assert advertised == ["kafka:9092", "kafka-2:9092", "kafka-3:9092"]
    for name, service in services.items():
        if service.get("build") and "COSNAP_KAFKA_BOOTSTRAP" in service.get("environment", {}):
            assert service["environment"]["COSNAP_KAFKA_BOOTSTRAP"] == ",".join(advertised), name
            assert str(service["environment"]["COSNAP_KAFKA_REPLICATION"]) == "3", name
