"""`cosnap-metrics validate`: is a running deployment, local or remote, working end to end?

Steps, each printed as one `PASS`/`FAIL` line with what it saw; the exit status is 0 only when
every step passed:

1. health: the ingest's `/health/ready` and `/health/detailed` (Kafka, topics, ClickHouse, lag),
   and on the embedded store the query service's `/health`;
2. events: one synthetic event of each type posted with the write key, all accepted (202). Every
   event carries the tags `synthetic: "true"` and `validate_run: <this run's id>`, so the shipped
   dashboards leave them out and a run finds its own;
3. clickhouse: the four events are read back from `metrics.events` (the path of `cosnap-metrics
   query`: the query service, or the ClickHouse server of COSNAP_CLICKHOUSE_URL);
4. alert: the performance event (metric `cosnap.validate`) fires the rule `cosnap_validate` of
   the default rules, grouped by run; the notifier sends that alert, and no other, to
   COSNAP_VALIDATE_WEBHOOK_URL, where this command listens (`--webhook-listen`) and verifies its
   Standard Webhooks signature with the secret (COSNAP_WEBHOOK_SECRET, or the runner's
   `<data dir>/validate-webhook-secret`).

`cosnap-metrics run` points COSNAP_VALIDATE_WEBHOOK_URL at `DEFAULT_LISTEN` and keeps the secret
in the data directory, so a bare `cosnap-metrics validate` checks `make run`.
"""

from __future__ import annotations

import hmac
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TextIO

import httpx
import orjson

from cosnap_metrics.errors import QueryError
from cosnap_metrics.query import run_query
from plumbing.webhooks import sign, signing_key
from schemas.settings import VALIDATE_RULE, CommonSettings, NotifierSettings

DEFAULT_LISTEN = "127.0.0.1:8129"  # where validate's receiver listens, and the runner sends to
SECRET_FILE = "validate-webhook-secret"  # noqa: S105 - the file's name, under the data directory
VALIDATE_METRIC = "cosnap.validate"
HEALTH_WAIT_S = 30.0  # the longest wait for a health answer (and for the post), or --timeout
SIGNATURE_TOLERANCE_S = 300  # Standard Webhooks: a delivery older or newer than this is refused


@dataclass(frozen=True)
class Step:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class Target:
    """Where the deployment answers, and the credentials validate uses."""

    ingest_url: str
    write_key: str
    webhook_secret: str
    listen: tuple[str, int]


def synthetic_events(run: str) -> list[dict[str, Any]]:
    """One event of each type, tagged synthetic and with the run's id, with ids of their own."""
    tags = {"synthetic": "true", "validate_run": run}
    common = {"source": "backend", "tags": tags}
    events: list[dict[str, Any]] = [
        {"type": "revenue", "name": "validate.purchase", "amount": "0.01", "currency": "USD"},
        {"type": "conversion", "funnel": "validate", "step": "validated", "user_id": f"validate-{run}"},
        {"type": "feature", "feature": "validate", "action": "run"},
        {"type": "performance", "metric": VALIDATE_METRIC, "value": 1, "unit": "count"},
    ]
    return [event | common | {"event_id": f"validate-{run}-{event['type']}"} for event in events]


def verify_signature(secret: str, headers: dict[str, str], body: bytes, now: float) -> str:
    """Why a delivery's Standard Webhooks signature does not hold ('' when it does)."""
    webhook_id = headers.get("webhook-id", "")
    stamp = headers.get("webhook-timestamp", "")
    if not webhook_id or not stamp.isdigit():
        return "no webhook-id or webhook-timestamp header"
    if abs(now - int(stamp)) > SIGNATURE_TOLERANCE_S:
        return f"webhook-timestamp {stamp} is more than {SIGNATURE_TOLERANCE_S} s off this clock"
    expected = sign(secret, webhook_id, int(stamp), body).encode()
    offered = headers.get("webhook-signature", "").split()
    if any(hmac.compare_digest(expected, candidate.encode()) for candidate in offered):
        return ""
    return "webhook-signature does not match the secret"


class Receiver:
    """An HTTP receiver of the notifier's signed deliveries, on a daemon thread."""

    def __init__(self, listen: tuple[str, int]) -> None:
        self.deliveries: queue.Queue[tuple[dict[str, str], bytes]] = queue.Queue()
        deliveries = self.deliveries

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                deliveries.put(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                """Quiet: validate prints its own lines."""

        self._server = ThreadingHTTPServer(listen, Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="receiver", daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _health(client: httpx.Client, name: str, url: str) -> Step:
    try:
        response = client.get(url)
    except httpx.HTTPError as exc:
        return Step(name, False, f"{url}: {type(exc).__name__}: {exc}")
    try:
        status = str(response.json().get("status", "?"))
    except ValueError:
        status = "?"
    passed = response.status_code == 200 and status in ("ready", "healthy", "ok", "degraded")
    return Step(name, passed, f"{url}: {response.status_code} {status}")


def _post(client: httpx.Client, target: Target, events: list[dict[str, Any]]) -> Step:
    try:
        response = client.post(
            f"{target.ingest_url}/v1/events",
            json={"events": events},
            headers={"Authorization": f"Bearer {target.write_key}"},
        )
    except httpx.HTTPError as exc:
        return Step("events", False, f"{type(exc).__name__}: {exc}")
    if response.status_code != 202:
        return Step("events", False, f"{response.status_code}: {response.text[:300]}")
    rejected = response.json().get("rejected", [])
    if rejected:
        return Step("events", False, f"rejected: {rejected}")
    return Step("events", True, f"{len(events)} synthetic events accepted, one of each type")


def _stored(settings: CommonSettings, events: list[dict[str, Any]], deadline: float) -> Step:
    ids = ", ".join(f"'{event['event_id']}'" for event in events)  # made above, from hex
    sql = f"SELECT count() FROM metrics.events FINAL WHERE event_id IN ({ids})"  # noqa: S608
    found, error = 0, ""
    while True:
        try:
            wait_s = max(deadline - time.monotonic(), 1.0)  # a hung store fails by the deadline
            found = int(str(run_query(settings, sql, wait_s).rows[0][0]))
            error = ""
        except (QueryError, httpx.HTTPError) as exc:
            error = str(exc)
        if found == len(events) or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    detail = f"{found} of {len(events)} events in metrics.events" + (f" ({error})" if error else "")
    return Step("clickhouse", found == len(events), detail)


def _alert(receiver: Receiver, secret: str, run: str, deadline: float) -> Step:
    """Wait for the firing alert of this run's group; check its signature."""
    while True:
        try:
            headers, body = receiver.deliveries.get(timeout=max(deadline - time.monotonic(), 0.01))
        except queue.Empty:
            return Step("alert", False, f"no alert of {VALIDATE_RULE} for run {run} reached the receiver")
        try:
            alert = orjson.loads(body)
        except orjson.JSONDecodeError:
            continue
        if alert.get("rule") != VALIDATE_RULE or alert.get("labels", {}).get("validate_run") != run:
            continue  # an earlier run's resolution, or a neighbour's
        if alert.get("state") != "firing":
            continue
        problem = verify_signature(secret, headers, body, time.time())
        if problem:
            return Step("alert", False, f"delivery {headers.get('webhook-id')}: {problem}")
        return Step("alert", True, f"{VALIDATE_RULE} firing, signed delivery {headers.get('webhook-id')}")


def validate(
    settings: CommonSettings, target: Target, out: TextIO, timeout_s: float = 90.0, run: str | None = None
) -> int:
    """Run every step, printing one line each; 0 when all passed, 1 otherwise."""
    run = run or uuid.uuid4().hex[:12]
    steps: list[Step] = []

    def report(step: Step) -> Step:
        steps.append(step)
        print(f"{'PASS' if step.passed else 'FAIL'}  {step.name:<18} {step.detail}", file=out, flush=True)
        return step

    try:
        signing_key(target.webhook_secret)
        receiver: Receiver | None = Receiver(target.listen)
    except (ValueError, OSError) as exc:
        receiver = None
        report(Step("receiver", False, f"cannot receive the alert on {target.listen}: {exc}"))
    print(f"validation run {run} against {target.ingest_url}", file=out, flush=True)
    checks: list[tuple[str, str]] = [
        ("ingest ready", f"{target.ingest_url}/health/ready"),
        ("ingest detailed", f"{target.ingest_url}/health/detailed"),
    ]
    if settings.embedded_clickhouse:
        checks.append(("query service", f"{settings.query_url}/health"))
    try:
        with httpx.Client(timeout=min(HEALTH_WAIT_S, timeout_s)) as client:
            for name, url in checks:
                report(_health(client, name, url))
            events = synthetic_events(run)
            posted = report(_post(client, target, events))
        deadline = time.monotonic() + timeout_s
        if posted.passed:
            report(_stored(settings, events, deadline))
            if receiver is not None:
                report(_alert(receiver, target.webhook_secret, run, deadline))
        else:
            report(Step("clickhouse", False, "skipped: no event was accepted"))
            report(Step("alert", False, "skipped: no event was accepted"))
    finally:
        if receiver is not None:
            receiver.close()
    failed = [step.name for step in steps if not step.passed]
    print(
        f"{'FAILED' if failed else 'PASSED'}: {len(steps) - len(failed)} of {len(steps)} steps passed"
        + (f" (failed: {', '.join(failed)})" if failed else ""),
        file=out,
        flush=True,
    )
    return 1 if failed else 0


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT` (or `:PORT`, every interface) of the receiver; ValueError if not one."""
    host, _, port = text.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host or "0.0.0.0", int(port)  # noqa: S104 - ':PORT' asks for every interface


def webhook_secret(settings: NotifierSettings, given: str | None) -> str:
    """The secret to verify with: `given`, else COSNAP_WEBHOOK_SECRET, else the runner's file."""
    if given:
        return given
    if secret := settings.webhook_secret.get_secret_value():
        return secret
    path = settings.data_dir / SECRET_FILE
    return path.read_text().strip() if path.exists() else ""
