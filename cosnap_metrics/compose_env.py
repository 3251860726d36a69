"""`cosnap-metrics compose-env`: the `.env` file docker-compose.yml reads its passwords from.

docker-compose.yml holds no password: each one is `${NAME:?...}`, so `docker compose` refuses to
start until the operator's `.env` (next to the compose file) sets it. This writes that file with
a new random password for each, only if no `.env` exists (it is never overwritten: the
passwords are already in ClickHouse's and Grafana's volumes), readable by its owner only. With
`--brokers 3` it also turns on the profile `cluster`: three KRaft nodes, and every service
pointed at all three (docs/reference.md, "A Kafka cluster").
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping
from pathlib import Path

from plumbing.private_files import create_private
from plumbing.webhooks import SECRET_PREFIX
from schemas.topics import min_insync_replicas

# The variables docker-compose.yml requires, and what each is the password of.
COMPOSE_PASSWORDS: dict[str, str] = {
    "CLICKHOUSE_PASSWORD": "ClickHouse user `cosnap`: the pipeline's writer (sink) and the query CLI",
    "CLICKHOUSE_GRAFANA_PASSWORD": "ClickHouse user `grafana`: read-only, the dashboards' datasource",
    "GRAFANA_ADMIN_PASSWORD": "Grafana's `admin` on http://127.0.0.1:3000",
    "WEBHOOK_SECRET": "Standard Webhooks secret (whsec_): the notifier signs with it, `validate` verifies",
}
PROJECT_NAME = "cosnap-metrics"  # the volumes are cosnap-metrics_kafka-data, ...
# Optional: where the ports are published (127.0.0.1 when unset).
_BINDS = {
    "COSNAP_BIND": "ClickHouse, Grafana and Alertmanager",
    "COSNAP_INGEST_BIND": "the ingest API (0.0.0.0 takes events from other machines: put TLS in front)",
}


# The Kafka nodes of the profile `cluster`, by service name (node ids 1, 2, 3).
CLUSTER_NODES = ("kafka", "kafka-2", "kafka-3")


def cluster_variables() -> dict[str, str]:
    """What docker-compose.yml needs to make its three nodes one cluster: the profile, the
    quorum, the replication (3, min.insync.replicas 2) and the services' bootstrap list."""
    replication = len(CLUSTER_NODES)
    return {
        "COMPOSE_PROFILES": "cluster",
        "KAFKA_QUORUM_VOTERS": ",".join(f"{i}@{node}:9093" for i, node in enumerate(CLUSTER_NODES, 1)),
        "KAFKA_MIN_INSYNC_REPLICAS": str(min_insync_replicas(replication)),
        "COSNAP_KAFKA_REPLICATION": str(replication),
        "COSNAP_KAFKA_BOOTSTRAP": ",".join(f"{node}:9092" for node in CLUSTER_NODES),
    }


def new_password() -> str:
    """256 random bits in URL-safe base64: no character that needs quoting in `.env` or escaping
    in the userinfo of COSNAP_CLICKHOUSE_URL."""
    return secrets.token_urlsafe(32)


def compose_env(passwords: Mapping[str, str], brokers: int = 1) -> str:
    """The text of `.env` with `passwords` (one for each of COMPOSE_PASSWORDS); with 3
    `brokers`, the variables of the Kafka cluster too."""
    lines = [
        "# docker-compose.yml reads these; written by `cosnap-metrics compose-env`. Keep it private.",
        f"COMPOSE_PROJECT_NAME={PROJECT_NAME}",
    ]
    for name, purpose in COMPOSE_PASSWORDS.items():
        lines += [f"# {purpose}", f"{name}={passwords[name]}"]
    lines.append("# Published on 127.0.0.1 unless set (an address of this machine, or 0.0.0.0 for all):")
    lines += [f"#   {name}=127.0.0.1   # {what}" for name, what in _BINDS.items()]
    if brokers > 1:
        lines.append(
            "# Kafka: a cluster of three KRaft nodes (kafka, kafka-2, kafka-3), every service on all three:"
        )
        lines += [f"{name}={value}" for name, value in cluster_variables().items()]
    return "\n".join(lines) + "\n"


def write_compose_env(path: Path, brokers: int = 1) -> None:
    """Write `path` with new passwords (and, with 3 `brokers`, the cluster's variables), mode
    0600; FileExistsError if it exists (nothing is changed then)."""
    passwords = {name: new_password() for name in COMPOSE_PASSWORDS}
    passwords["WEBHOOK_SECRET"] = SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()
    text = compose_env(passwords, brokers)
    if not create_private(path, text):
        raise FileExistsError(path)
