"""Sentry's integration webhooks on the ingest (docs/reference.md, "Sentry webhooks"):
`POST /v1/integrations/sentry/{project}`.

A request is taken only when `Sentry-Hook-Signature` is the HMAC-SHA256 (hex) of the raw body
under a client secret of the project's Sentry integrations (compared in constant time) and its
`Sentry-Hook-Timestamp` is recent; else 401. By `Sentry-Hook-Resource`:

- `metric_alert` (`critical`, `warning`, `resolved`) and `event_alert` (`triggered`) become alert
  records on the alerts topic, which the sink stores and the notifier delivers as the pipeline's
  own: labels `alertname` (the Sentry rule's name), `severity`, `project`, `source: sentry`,
  Sentry's ids and the routing labels (`channels` of the severity, `page`); a link back; the
  revenue at stake (`impact`). The severity is the monitoring guide's: the `category` tag first
  (payment, security: critical; external, database: high), then the count (more than 50 errors:
  critical, 20: high, 5: medium, else low), then Sentry's own (critical; warning is high).
- `error` (`created`) and `issue` (`created`, `unresolved`) are counted as performance events of
  the metrics `sentry.errors` and `sentry.issues` (value 1, unit `count`), so that alert rules
  count errors as they count anything; `issue` `resolved`, `archived` and `ignored` resolve the
  issue's alert.
- any other resource is acknowledged and left.

The answer is 200 once what the request became is in Kafka (acks=all).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ingest.batch import parse_events
from ingest.body import json_path, read_capped
from ingest.errors import BadRequest, Unauthorized
from ingest.intake import IngestState
from schemas.records import AlertRecord, alert_fingerprint, request_ids_header
from schemas.rules import CHANNELS_BY_SEVERITY, AlertState, BusinessImpact, Impact, Severity, routing_labels
from schemas.settings import IngestSettings

_ALERT_RESOURCES = frozenset({"metric_alert", "event_alert"})
_COUNTED = {("error", "created"): "sentry.errors", ("issue", "created"): "sentry.issues"}
_COUNTED |= {("issue", "unresolved"): "sentry.issues"}
_ISSUE_CLOSED = frozenset({"resolved", "archived", "ignored"})
_IMPACT = Impact()  # revenue per minute over the last hour, over an episode of 30 minutes; pages above 1000
# The monitoring guide's severities of Sentry's alerts: by the `category` tag, else by the count.
_BY_CATEGORY: dict[str, Severity] = {
    "payment": "critical",
    "security": "critical",
    "external": "high",
    "database": "high",
}
_BY_COUNT: tuple[tuple[float, Severity], ...] = ((50, "critical"), (20, "high"), (5, "medium"))
_BY_ACTION: dict[str, Severity] = {"critical": "critical", "warning": "high", "fatal": "critical"}
# The severities each kind of alert can fire at: a resolution resolves them all (it does not say
# which one fired). Issue alerts have no count, so only a category or Sentry's level decides.
_METRIC_SEVERITIES: tuple[Severity, ...] = ("critical", "high", "medium", "low")
_ISSUE_SEVERITIES: tuple[Severity, ...] = ("critical", "high")
_LEADING_COUNT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s")


def _text(value: Any, default: str = "") -> str:
    return str(value) if isinstance(value, str | int) and not isinstance(value, bool) else default


def _time(value: Any, default: datetime) -> datetime:
    """A Sentry time: ISO 8601 text (`2020-09-13T12:26:40.000000Z`) or epoch seconds."""
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return datetime.fromtimestamp(value, UTC)
        if isinstance(value, str):
            moment = datetime.fromisoformat(value)
            return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        pass
    return default


def _tags(*sources: Any) -> dict[str, str]:
    """Tags from Sentry's shapes: an object, a list of [key, value] pairs (an event's), or a
    search query (`category:payment level:error`, an alert rule's); later sources win."""
    tags: dict[str, str] = {}
    for source in sources:
        if isinstance(source, dict):
            tags |= {str(k): v for k, v in source.items() if isinstance(v, str)}
        elif isinstance(source, list):
            tags |= {
                pair[0]: pair[1]
                for pair in source
                if isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)
            }
        elif isinstance(source, str):
            terms = [term for term in source.split() if ":" in term and not term.startswith("!")]
            tags |= dict(term.split(":", 1) for term in terms)
    return tags


def severity_of(tags: dict[str, str], count: float | None, sentry: Severity) -> Severity:
    """The monitoring guide's severity of a Sentry alert: its `category` tag (payment, security:
    critical; external, database: high), else its count (> 50 critical, > 20 high, > 5 medium,
    else low), else Sentry's own (`sentry`)."""
    by_category = _BY_CATEGORY.get(tags.get("category", ""))
    if by_category is not None:
        return by_category
    if count is None:
        return sentry
    return next((severity for above, severity in _BY_COUNT if count > above), "low")


def _count(*sources: Any) -> float | None:
    """The number of events an alert counts: a numeric `count`, or the leading number of Sentry's
    `description_text` ("1000 events in the last 10 minutes")."""
    for source in sources:
        if isinstance(source, int | float) and not isinstance(source, bool):
            return float(source)
        if isinstance(source, str) and (found := _LEADING_COUNT.match(source)):
            return float(found[1])
    return None


@dataclass(frozen=True, slots=True)
class _Alert:
    """What an alert webhook says, before it becomes records."""

    rule_name: str
    labels: dict[str, str]  # besides alertname, severity, project and source
    annotations: dict[str, str]
    firing: Severity | None  # the severity that fires; None when it resolves
    threshold: float
    starts_at: datetime
    ends_at: datetime | None
    severities: tuple[Severity, ...]  # those it may fire at: a resolution resolves each
    graded: bool = False  # a metric alert: moves between severities within an incident


def _metric_alert(payload: dict[str, Any], action: str, now: datetime) -> _Alert:
    data = json_path(payload, "data") or {}
    incident = json_path(data, "metric_alert") or {}
    rule = json_path(incident, "alert_rule") or {}
    name = _text(json_path(rule, "name"), "Sentry metric alert")
    if action not in ("critical", "warning", "resolved"):
        raise BadRequest(f"metric_alert action {action!r} is not critical, warning or resolved")
    threshold = next(
        (
            trigger.get("alert_threshold") or trigger.get("alertThreshold")
            for trigger in json_path(rule, "triggers") or []
            if isinstance(trigger, dict) and trigger.get("label") == action
        ),
        None,
    )
    started = _time(json_path(incident, "date_started") or json_path(incident, "date_detected"), now)
    tags = _tags(json_path(rule, "query"), json_path(incident, "tags"), json_path(data, "tags"))
    count = _count(
        json_path(incident, "count"), json_path(data, "count"), json_path(data, "description_text")
    )
    severities = (severity_of(tags, None, "critical"),) if tags.get("category") in _BY_CATEGORY else None
    return _Alert(
        rule_name=name,
        labels={
            "sentry_alert_rule_id": _text(json_path(rule, "id")),
            "sentry_incident": _text(json_path(incident, "identifier") or json_path(incident, "id")),
        },
        annotations={
            "summary": _text(json_path(data, "description_title"), name),
            "description": _text(json_path(data, "description_text")),
            "sentry_url": _text(json_path(data, "web_url")),
        },
        firing=None if action == "resolved" else severity_of(tags, count, _BY_ACTION[action]),
        threshold=float(threshold) if isinstance(threshold, int | float) else 0.0,
        starts_at=started,
        ends_at=_time(json_path(incident, "date_closed"), now) if action == "resolved" else None,
        severities=severities or _METRIC_SEVERITIES,
        graded=True,
    )


def _issue_labels(issue_id: str) -> dict[str, str]:
    return {"sentry_issue_id": issue_id}


def _event_alert(payload: dict[str, Any], now: datetime) -> _Alert:
    data = json_path(payload, "data") or {}
    event = json_path(data, "event") or {}
    rule = _text(json_path(data, "triggered_rule"), "Sentry issue alert")
    level = _text(json_path(event, "level"), "error")
    return _Alert(
        rule_name="Sentry issue alert",
        labels=_issue_labels(_text(json_path(event, "issue_id"))),
        annotations={
            "summary": f"{rule}: {_text(json_path(event, 'title'), 'a Sentry issue')}",
            "description": f"{level} in {_text(json_path(event, 'culprit'), 'unknown')}",
            "sentry_rule": rule,
            "sentry_url": _text(json_path(event, "web_url")),
        },
        firing=severity_of(_tags(json_path(event, "tags")), None, _BY_ACTION.get(level, "high")),
        threshold=0.0,
        starts_at=_time(json_path(event, "datetime") or json_path(event, "timestamp"), now),
        ends_at=None,
        severities=_ISSUE_SEVERITIES,
    )


def _issue_closed(payload: dict[str, Any], now: datetime) -> _Alert:
    issue = json_path(payload, "data", "issue") or {}
    return _Alert(
        rule_name="Sentry issue alert",
        labels=_issue_labels(_text(json_path(issue, "id"))),
        annotations={
            "summary": f"resolved: {_text(json_path(issue, 'title'), 'a Sentry issue')}",
            "sentry_url": _text(json_path(issue, "web_url") or json_path(issue, "permalink")),
        },
        firing=None,
        threshold=0.0,
        starts_at=_time(json_path(issue, "firstSeen"), now),
        ends_at=now,
        severities=_ISSUE_SEVERITIES,
    )


def _records(project: str, alert: _Alert, impact: BusinessImpact | str, now: datetime) -> list[AlertRecord]:
    """The state changes an alert webhook makes. Alertmanager tells alerts apart by their labels,
    severity included, and a Sentry alert that resolves does not say at which severity it fired:
    so a resolution resolves every severity the alert may have fired at, and a metric alert that
    fires at one severity resolves the others (its incident's earlier grades; a resolution of an
    alert that was not firing changes nothing in Alertmanager). `impact`: the figures, or why
    they are unknown."""
    records = []
    for severity in alert.severities:  # the firing one is among them
        state: AlertState = "firing" if severity == alert.firing else "resolved"
        if state == "resolved" and alert.firing is not None and not alert.graded:
            continue
        labels = {"alertname": alert.rule_name, "severity": severity, "project": project, "source": "sentry"}
        labels |= {key: value for key, value in alert.labels.items() if value}
        annotations = {key: value for key, value in alert.annotations.items() if value}
        figures = impact if isinstance(impact, BusinessImpact) and state == "firing" else None
        if state == "firing":
            annotations |= {"impact": impact} if isinstance(impact, str) else impact.annotations(_IMPACT)
        records.append(
            AlertRecord(
                fingerprint=alert_fingerprint(labels),
                rule="sentry",
                state=state,
                severity=severity,
                labels=labels | routing_labels(severity, CHANNELS_BY_SEVERITY[severity], figures, _IMPACT),
                annotations=annotations,
                value=None,
                threshold=alert.threshold,
                starts_at=alert.starts_at,
                ends_at=None if state == "firing" else (alert.ends_at or now),
                evaluated_at=now,
                emitted_at=now,
            )
        )
    return records


def _counted_event(payload: dict[str, Any], resource: str, action: str, metric: str) -> dict[str, Any]:
    """The performance event counting one Sentry error, or one issue created or reopened."""
    item = json_path(payload, "data", resource) or {}
    if resource == "error":
        event_id = f"sentry-{_text(json_path(item, 'event_id'))}"
        timestamp = json_path(item, "datetime") or json_path(item, "timestamp")
    else:
        seen = _text(json_path(item, "lastSeen"))
        event_id = f"sentry-issue-{_text(json_path(item, 'id'))}-{action}-{seen}"
        timestamp = json_path(item, "lastSeen") or json_path(item, "firstSeen")
    tags = {
        "level": _text(json_path(item, "level")),
        "platform": _text(json_path(item, "platform")),
        "sentry_issue_id": _text(
            json_path(item, "issue_id") or (json_path(item, "id") if resource == "issue" else None)
        ),
    }
    event: dict[str, Any] = {
        "type": "performance",
        "metric": metric,
        "value": 1,
        "unit": "count",
        "source": "sentry",
        "event_id": hashlib.sha256(event_id.encode()).hexdigest()[:40] if len(event_id) > 64 else event_id,
        "tags": {key: value[:200] for key, value in tags.items() if value},
    }
    if isinstance(timestamp, str | int | float) and not isinstance(timestamp, bool):
        event["timestamp"] = timestamp
    return event


class SentryHooks:
    """The webhook route over the ingest's state: signature check, then records and events."""

    def __init__(self, state: IngestState, settings: IngestSettings) -> None:
        self._state = state
        self._max_age = settings.sentry_hook_max_age_s
        self._query_url = settings.query_url
        self._query_token = settings.query_token_file

    def _verify(self, project: str, body: bytes, signature: str | None, timestamp: str | None) -> None:
        """401 unless the body is signed with a client secret of the project and recent."""
        try:
            sent = float(timestamp or "")
        except ValueError:
            sent = None
        if sent is None or abs(time.time() - sent) > self._max_age:
            raise Unauthorized(f"Sentry-Hook-Timestamp missing or older than {self._max_age:.0f} s")
        given = (signature or "").strip().lower()
        matched = False
        for secret in self._state.keys.sentry_secrets(project):
            expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
            matched |= hmac.compare_digest(expected, given)
        if not matched:
            raise Unauthorized("Sentry-Hook-Signature does not match a client secret of this project")

    async def _impact(self, project: str) -> BusinessImpact | str:
        """The revenue at stake, as the pipeline's own alerts state it: the project's revenue
        over the last hour in metrics.events, read through the query service; else why not."""
        sql = (
            "SELECT currency, toString(sum(amount)) FROM metrics.events FINAL "  # noqa: S608  # hex literal
            f"WHERE project = unhex('{project.encode().hex()}') AND type = 'revenue' "
            f"AND timestamp >= now() - INTERVAL {_IMPACT.revenue_window} SECOND GROUP BY currency"
        )
        try:
            token = self._query_token.read_text().strip()
            async with httpx.AsyncClient(timeout=2.0) as client:
                answer = await client.post(
                    f"{self._query_url}/v1/query",
                    json={"sql": sql},
                    headers={"Authorization": f"Bearer {token}"},
                )
            answer.raise_for_status()
            totals = {str(row[0]): Decimal(str(row[1])) for row in answer.json()["rows"]}
        except (OSError, httpx.HTTPError, ValueError, KeyError, TypeError, InvalidOperation) as exc:
            return f"revenue at stake unknown (the query service did not answer: {type(exc).__name__})"
        return BusinessImpact(totals)

    async def receive(self, request: Request, project: str) -> JSONResponse:
        received_at = datetime.now(UTC)
        request_id: str = request.state.request_id
        body = await read_capped(request.stream(), request.headers.get("content-length"))
        headers = request.headers
        self._verify(
            project, body, headers.get("sentry-hook-signature"), headers.get("sentry-hook-timestamp")
        )
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"body is not valid JSON: {exc}") from exc
        if not isinstance(payload, dict):
            raise BadRequest("body must be a JSON object")
        resource = headers.get("sentry-hook-resource", "")
        action = _text(payload.get("action"))
        alert = None
        if resource == "metric_alert":
            alert = _metric_alert(payload, action, received_at)
        elif resource == "event_alert":
            alert = _event_alert(payload, received_at)
        elif resource == "issue" and action in _ISSUE_CLOSED:
            alert = _issue_closed(payload, received_at)
        if alert is not None:
            impact = await self._impact(project) if alert.firing else ""
            await self._publish(request_id, _records(project, alert, impact, received_at))
            return self._answer(request, project, "alert", 1, 0)
        metric = _COUNTED.get((resource, action))
        if metric is None:
            return self._answer(request, project, "ignored", 0, 0)
        event = _counted_event(payload, resource, action, metric)
        parsed = parse_events([event], None, received_at, request_id, self._state.policy)
        await self._state.accept(project, request_id, received_at, parsed, parsed.rejected)
        return self._answer(request, project, "event", len(parsed.accepted), len(parsed.rejected))

    async def _publish(self, request_id: str, records: list[AlertRecord]) -> None:
        """Each record on the alerts topic, keyed by its fingerprint, in order; waits for Kafka."""
        producer = self._state.running.producer
        for record in records:
            await producer.send(
                self._state.topics.alerts,
                key=record.fingerprint.encode(),
                value=record.model_dump_json().encode(),
                headers=[request_ids_header([request_id])],
            )

    @staticmethod
    def _answer(request: Request, project: str, became: str, accepted: int, rejected: int) -> JSONResponse:
        request.state.log_context = {"project": project, "accepted": accepted, "rejected": rejected}
        return JSONResponse({"received": became, "accepted": accepted, "rejected": rejected})


# Sentry's webhook body as its documentation shows it, for the OpenAPI document.
_BODY = {
    "type": "object",
    "required": ["action", "data"],
    "properties": {
        "action": {"type": "string"},
        "actor": {"type": "object"},
        "data": {"type": "object"},
        "installation": {"type": "object"},
    },
}


def sentry_router(state: IngestState, settings: IngestSettings) -> APIRouter:
    """The route Sentry's integration posts its webhooks to."""
    hooks = SentryHooks(state, settings)
    router = APIRouter(tags=["Sentry integration"])

    @router.post(
        "/v1/integrations/sentry/{project}",
        responses={
            400: {
                "description": "A signed body that is not a JSON object, or an unknown metric alert action"
            },
            401: {"description": "Signature or timestamp refused"},
        },
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": _BODY}}}},
    )
    async def sentry_webhook(request: Request, project: str) -> JSONResponse:
        """A webhook of a Sentry integration of `project` (metric_alert, event_alert, issue, error)."""
        return await hooks.receive(request, project)

    return router
