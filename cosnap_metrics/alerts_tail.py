"""`cosnap-metrics alerts tail`: print alert state changes as they arrive on `metrics.alerts.v1`.

Also the example of an alert consumer: a plain kafka-python consumer without a group (so it
reads every partition and commits nothing), the record parsed with `schemas.records.AlertRecord`.
"""

from __future__ import annotations

from datetime import UTC
from typing import TextIO

from kafka import KafkaConsumer
from pydantic import ValidationError

from schemas.records import AlertRecord, alert_id


def format_alert(alert: AlertRecord) -> str:
    """One line: when, STATE, severity, rule, the episode's id (what `alerts ack` takes), the labels
    besides alertname and severity, value vs threshold, summary."""
    changed_at = alert.ends_at if alert.ends_at is not None else alert.starts_at
    if changed_at.tzinfo is not None:
        changed_at = changed_at.astimezone(UTC)
    labels = " ".join(
        f"{name}={value}"
        for name, value in sorted(alert.labels.items())
        if name not in ("alertname", "severity")
    )
    value = "no data" if alert.value is None else f"{alert.value:g}"
    return (
        f"{changed_at:%Y-%m-%dT%H:%M:%SZ}  {alert.state.upper():<8}  {alert.severity:<8}  {alert.rule}"
        f"  {alert_id(alert.fingerprint, alert.starts_at)}  {{{labels}}}"
        f"  value {value} (threshold {alert.threshold:g})"
        f"  {alert.annotations.get('summary', '')}"
    ).rstrip()


def tail(
    bootstrap: str,
    topic: str,
    out: TextIO,
    *,
    from_beginning: bool = False,
    raw_json: bool = False,
    max_records: int | None = None,
) -> int:
    """Print records until Ctrl-C, or until `max_records` were printed; returns the exit status."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
    )
    printed = 0
    try:
        while True:
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    if raw_json:
                        line = record.value.decode(errors="replace")
                    else:
                        try:
                            line = format_alert(AlertRecord.model_validate_json(record.value))
                        except ValidationError as exc:
                            line = f"(offset {record.offset}: not an alert record: {exc.errors()[0]['msg']})"
                    print(line, file=out, flush=True)
                    printed += 1
                    if printed == max_records:
                        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        consumer.close()
