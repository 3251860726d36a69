"""`cosnap-metrics alerts ack ID [--noise]`: an operator's acknowledgement of one alert episode,
as a record on `metrics.alert-acks.v1` that the sink keeps in `metrics.alert_acks`; `--noise`
marks the alert a false positive, which the noise rate of `alerts report` counts.

The episode is looked up in `metrics.alerts` first (the way `cosnap-metrics query` reads), so an
id that names no alert is refused rather than counted.
"""

from __future__ import annotations

from datetime import UTC, datetime

from kafka import KafkaProducer

from cosnap_metrics.errors import QueryError
from cosnap_metrics.query import run_query
from schemas.records import AlertAck, epoch_ms, parse_alert_id
from schemas.settings import CommonSettings


def acknowledge(settings: CommonSettings, text: str, *, noise: bool, note: str = "") -> AlertAck:
    """Publish the acknowledgement of the episode `text` names and return it once Kafka has it.
    Raises ValueError for a malformed id, QueryError when no such episode is stored (or the
    store cannot be read), KafkaError when Kafka did not take the record."""
    fingerprint, starts_at = parse_alert_id(text)
    # Both values are checked by parse_alert_id: 16 hex digits and an integer.
    found = run_query(
        settings,
        "SELECT rule, project FROM metrics.alerts FINAL "  # noqa: S608
        f"WHERE fingerprint = '{fingerprint}' "
        f"AND starts_at = fromUnixTimestamp64Milli(toInt64({epoch_ms(starts_at)}), 'UTC') "
        "AND state = 'firing' LIMIT 1",
    )
    if not found.rows:
        raise QueryError(f"no alert {text} in metrics.alerts (alerts tail prints the ids)")
    rule, project = found.rows[0]
    ack = AlertAck(
        fingerprint=fingerprint,
        starts_at=starts_at,
        rule=rule,
        project=project,
        noise=noise,
        note=note,
        acked_at=datetime.now(UTC),
    )
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    try:
        producer.send(
            settings.topics.alert_acks, key=fingerprint.encode(), value=ack.model_dump_json().encode()
        ).get(timeout=30)
    finally:
        producer.close(timeout=5)
    return ack
