"""Alerting measured, end to end on real Kafka and chDB: a scripted incident through the ingest,
the worker, the notifier (two webhooks: one fails a state change for good, one takes it at the
second try) and the sink; an operator acknowledges the first episode as noise; then `cosnap-metrics
alerts report` and the sink's `/metrics` show what was scripted: alerts, delivery %, MTTR,
flapping and noise, each beside its target."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cosnap_metrics.broker import KafkaBroker
from schemas.records import alert_id
from tests.conftest import AlertListener, Pipeline, wait_for
from tests.sinks.notify.test_delivery import SECRET, Receiver, start_notifier
from tests.streams.test_alerting import payment, short_rules

pytestmark = [pytest.mark.kafka, pytest.mark.e2e]


def cli(pipeline: Pipeline, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cosnap_metrics.cli", *args],
        env=pipeline.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def gauges(pipeline: Pipeline) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every cosnap_alerting_* sample of the sink's /metrics: (name, sorted labels) -> value."""
    text = httpx.get(f"{pipeline.query_url}/metrics", timeout=10).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        if family.name.startswith("cosnap_alerting_")
        for sample in family.samples
    }


def seconds(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def test_a_scripted_incident_is_measured_by_the_report_and_on_metrics(
    pipeline: Pipeline, kafka: KafkaBroker, tmp_path: Path
) -> None:
    failing, flaky = Receiver(500, 500), Receiver(500)  # the first state change: failed; at the 2nd try
    pipeline.env |= {
        "COSNAP_RULES_FILE": str(short_rules(tmp_path)),
        "COSNAP_WATERMARK_IDLE_S": "2",
        "COSNAP_ALERTING_REFRESH_S": "1",
    }
    listener = AlertListener(kafka.bootstrap, pipeline.topics.alerts)
    client = httpx.Client(
        base_url=pipeline.ingest_url, headers={"Authorization": f"Bearer {pipeline.write_key}"}, timeout=30
    )

    def post(*events: dict[str, Any]) -> bool:
        response = client.post("/v1/events", json={"events": list(events)})
        assert response.status_code == 202, response.text
        return True

    def states() -> list[str]:
        return [record["state"] for _, record in listener.records]

    try:
        pipeline.start("sink", "streams", "ingest")
        start_notifier(
            pipeline,
            kafka,
            COSNAP_WEBHOOK_URLS=f"{failing.url},{flaky.url}",
            COSNAP_WEBHOOK_SECRET=SECRET,
            COSNAP_NOTIFY_MAX_TRIES="2",
        )
        post(*(payment("succeeded") for _ in range(20)))
        assert wait_for(lambda: "owns events partition" in pipeline.log("streams"), timeout=60)

        # Episode 1: three payment failures fire payment_failures; successes resolve it once the
        # failures have left its 30-second window.
        post(*(payment("failed") for _ in range(3)))
        assert wait_for(lambda: states() == ["firing"], timeout=30), pipeline.log("streams")
        assert wait_for(
            lambda: post(payment("succeeded")) and "resolved" in states(), timeout=120, interval=1
        ), pipeline.log("streams")
        # Episode 2, at once: flapping (it fired again within 10 minutes of resolving).
        post(*(payment("failed") for _ in range(3)))
        assert wait_for(lambda: states() == ["firing", "resolved", "firing"], timeout=30), states()
        first, resolved, second = (record for _, record in listener.records)

        # Two webhooks x three state changes; the failing one dead-letters the first firing.
        deliveries = "SELECT outcome, tries FROM metrics.alert_deliveries FINAL ORDER BY finished_at, tries"
        assert wait_for(lambda: len(pipeline.query(deliveries)) == 6, timeout=60), pipeline.log("notify")
        assert sorted(map(tuple, pipeline.query(deliveries))) == sorted(
            [("failed", 2), ("delivered", 2), *[("delivered", 1)] * 4]
        )

        # The operator finds the first episode's id in alerts tail and calls it noise.
        tail = cli(pipeline, "alerts", "tail", "--from-beginning", "--max", "3")
        assert tail.returncode == 0, tail.stderr
        first_id = alert_id(first["fingerprint"], datetime.fromisoformat(first["starts_at"]))
        assert f"payment_failures  {first_id}  " in tail.stdout.splitlines()[0]
        acked = cli(pipeline, "alerts", "ack", first_id, "--noise", "--note", "load test")
        assert acked.returncode == 0, acked.stderr
        assert (
            acked.stdout.strip()
            == f"acknowledged {first_id} (payment_failures, project cosnap-test) as noise"
        )
        assert wait_for(lambda: pipeline.query("SELECT count() FROM metrics.alert_acks") == [[1]], timeout=30)
        for wrong, reason in (("not-an-id", "is not an alert id"), (f"{'0' * 16}-1", "no alert")):
            refused = cli(pipeline, "alerts", "ack", wrong, "--noise")
            assert (refused.returncode, refused.stdout) == (2, ""), refused
            assert reason in refused.stderr

        # The report: what was scripted, for the rule and for all rules.
        mttr = seconds(resolved["ends_at"]) - seconds(resolved["starts_at"])
        detect = [max(0.0, seconds(r["emitted_at"]) - seconds(r["evaluated_at"])) for r in (first, second)]
        report = cli(pipeline, "alerts", "report", "--json")
        assert report.returncode == 0, report.stderr
        rows = {row["rule"]: row for row in json.loads(report.stdout)}
        assert set(rows) == {"payment_failures", "(all)"}
        for row in rows.values():
            assert (row["fired"], row["alerts_per_day"], row["flapping"]) == (2, round(2 / 7, 2), 1)
            assert (row["delivered"], row["failed"], row["delivery_pct"]) == (5, 1, 83.33)
            assert (row["resolved"], row["mttr_s"]) == (1, round(mttr, 1))
            assert row["detect_s"] == pytest.approx(sum(detect) / 2, abs=0.002)
            assert (row["noise"], row["noise_pct"]) == (1, 50.0)
        table = cli(pipeline, "alerts", "report")
        assert table.returncode == 0, table.stderr
        lines = table.stdout.splitlines()
        assert lines[0].startswith("alerting over the 7 days to ")
        assert lines[1].split() == [
            "rule", "fired", "alerts/day", "(<", "10)", "delivery", "(>", "99.9", "%)", "detect", "(mean)",
            "MTTR", "(<", "5.0", "min)", "flapping", "noise", "(<", "2", "%)",
        ]  # fmt: skip
        cells = lines[2].split("  ")
        assert [c.strip() for c in cells if c.strip()] == [
            "payment_failures", "2", "0.29", "83.33 % (5/6) !", f"{rows['(all)']['detect_s']:.1f} s",
            f"{rows['(all)']['mttr_s']:.1f} s (1)", "1", "50.00 % (1) !",
        ]  # fmt: skip
        assert lines[3].startswith("(all)")

        # /metrics: the same numbers, refreshed every second, with the targets; promtool passes.
        rule, every = (("rule", "payment_failures"),), (("rule", "(all)"),)
        expected = {
            ("cosnap_alerting_alerts_fired", rule): 2,
            ("cosnap_alerting_alerts_per_day", rule): round(2 / 7, 2),
            ("cosnap_alerting_deliveries", (("outcome", "failed"), *rule)): 1,
            ("cosnap_alerting_delivery_ratio", rule): 0.8333,
            ("cosnap_alerting_resolve_seconds", rule): rows["payment_failures"]["mttr_s"],
            ("cosnap_alerting_detect_seconds", rule): rows["payment_failures"]["detect_s"],
            ("cosnap_alerting_flapping_alerts", rule): 1,
            ("cosnap_alerting_noise_ratio", rule): 0.5,
            ("cosnap_alerting_noise_ratio", every): 0.5,
            ("cosnap_alerting_delivery_ratio", every): 0.8333,
            ("cosnap_alerting_target", (("measure", "delivery_ratio"),)): 0.999,
            ("cosnap_alerting_target", (("measure", "resolve_seconds"),)): 300,
        }

        def disagreeing() -> dict[Any, tuple[float | None, float]]:
            found = gauges(pipeline)
            return {
                key: (found.get(key), want)
                for key, want in expected.items()
                if found.get(key) != pytest.approx(want, abs=1e-9)
            }

        assert wait_for(lambda: not disagreeing(), timeout=30), disagreeing()
        exposition = httpx.get(f"{pipeline.query_url}/metrics", timeout=10).content
        lint = subprocess.run(
            ["promtool", "check", "metrics"], input=exposition, capture_output=True, timeout=30
        )
        assert lint.returncode == 0, lint.stdout.decode() + lint.stderr.decode()
    finally:
        client.close()
        listener.close()
        failing.close()
        flaky.close()
