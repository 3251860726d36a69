"""Prometheus metrics of the notifier (`cosnap-metrics notify`), on its status endpoint. `target`
is the target's name (`alertmanager <url>`, `webhook <url>`, credentials and query left out): as
many values as targets configured."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

DELIVERIES = Counter(
    "cosnap_notify_deliveries_total",
    "Alert state changes a target took (delivered) or did not take after its tries (failed)",
    ["target", "outcome"],
)
RETRIES = Counter("cosnap_notify_retries_total", "Tries after the first, by target", ["target"])
DELIVERY_SECONDS = Histogram(
    "cosnap_notify_delivery_duration_seconds",
    "From the first try to the target taking the record, retries included, by target",
    ["target"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
)
DEAD_LETTERS = Counter(
    "cosnap_notify_dead_letters_total",
    "Records dead-lettered: not taken by a target (undelivered) or not an alert record (undecodable)",
    ["reason"],
)
