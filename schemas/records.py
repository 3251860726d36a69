"""Kafka records: the envelope on `metrics.events.v1`, final windows on `metrics.aggregates.v1`,
rejects on `metrics.dead-letter.v1`, alert state changes on `metrics.alerts.v1`, their deliveries
on `metrics.alert-deliveries.v1` and acknowledgements on `metrics.alert-acks.v1`. Values are JSON;
decimals travel as strings."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Literal

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_serializer

from schemas.events import (
    ConversionEvent,
    EventId,
    EventType,
    FeatureEvent,
    PerformanceEvent,
    RevenueEvent,
)
from schemas.rules import ROUTING_LABELS, AlertState, SeverityName

Granularity = Literal["10s", "1m", "1h"]
GRANULARITY_SECONDS: dict[Granularity, int] = {"10s": 10, "1m": 60, "1h": 3600}


class _Stored(BaseModel):
    """What the ingest API adds to an accepted event before it goes to Kafka. It comes first in
    the bases so that its required `event_id` and `timestamp` replace the client's optional ones."""

    event_id: EventId
    timestamp: AwareDatetime = Field(description="Event time, skew-corrected, UTC, milliseconds")
    received_at: AwareDatetime = Field(description="When the ingest API received the request")
    request_id: str = Field(description="The HTTP request that carried the event (correlation id)")


class StoredRevenue(_Stored, RevenueEvent):  # type: ignore[misc]  # required narrows optional
    pass


class StoredConversion(_Stored, ConversionEvent):  # type: ignore[misc]  # required narrows optional
    pass


class StoredFeature(_Stored, FeatureEvent):  # type: ignore[misc]  # required narrows optional
    pass


class StoredPerformance(_Stored, PerformanceEvent):  # type: ignore[misc]  # required narrows optional
    pass


StoredEvent = Annotated[
    StoredRevenue | StoredConversion | StoredFeature | StoredPerformance, Field(discriminator="type")
]


class Envelope(BaseModel):
    """One Kafka record carrying many accepted events of one project, from one or many requests.

    The worker pays a fixed cost per record whatever its size, so records carry events by the hundred:
    the ingest API packs the events of concurrent requests into shared envelopes (see
    ingest/envelopes.py).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1
    project: str
    events: list[StoredEvent] = Field(min_length=1)


class Sketch(BaseModel):
    """A DDSketch (relative accuracy `accuracy`): bin index -> count; bin i covers values in
    (gamma^(i-1), gamma^i] with gamma = (1 + accuracy) / (1 - accuracy); merging adds counts."""

    accuracy: float
    positive: dict[str, int]
    negative: dict[str, int]
    zeros: int


class WindowAggregate(BaseModel):
    """The on-time part of a final (closed) window of one series; key =
    `series_id|granularity|window_start`. Late events are added to the window as correction parts
    by the sink: analysts read `metrics.windows`, which merges them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1
    project: str
    type: EventType
    name: str = Field(description="revenue name, metric, feature, or funnel:step")
    currency: str = Field(default="", description="ISO 4217 code for revenue series, else empty")
    dims: dict[str, str] = Field(default_factory=dict)
    series_id: str
    granularity: Granularity
    window_start: datetime
    window_end: datetime
    count: int
    sum: Decimal = Field(description="Exact: revenue per currency, performance values as sent")
    min: Decimal
    max: Decimal
    mean: float
    p50: float | None = Field(default=None, description="Performance series: from the sketch, ±1 %")
    p90: float | None = None
    p95: float | None = None
    p99: float | None = None
    sketch: Sketch | None = Field(default=None, description="Performance series: the mergeable DDSketch")
    step_index: int | None = Field(
        default=None, description="Conversion series: the step's place in its funnel"
    )
    ratio_to_previous: float | None = Field(
        default=None, description="Conversion series: count / count of the previous step, same window"
    )
    emitted_at: datetime


class LateSeries(BaseModel):
    """A series of late events, as the worker resolved it (the same dims and caps as its windows)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: EventType
    name: str
    currency: str = ""
    dims: dict[str, str] = Field(default_factory=dict)
    step_index: int | None = None


class LateEvent(BaseModel):
    """One event whose 10-second window had closed when the worker read it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: EventId
    series_id: str
    timestamp: datetime
    received_at: datetime | None = None
    value: Decimal = Field(description="What it adds to the window's sum: the amount, the value, or 1")
    bin: tuple[int, int] | None = Field(
        default=None, description="Performance: its DDSketch bin as (sign -1/0/1, index)"
    )


class LateEvents(BaseModel):
    """The late events of one events record, on `metrics.internal.late` (key = project); the sink
    turns them into correction rows of the windows they belong to (docs/reference.md, "Late
    events"). The same record always yields the same value, so a replay replaces, never adds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1
    project: str
    partition: int = Field(description="The events partition of the record that carried them")
    offset: int = Field(description="Its offset")
    folded_at: datetime = Field(description="When the worker read the record")
    series: dict[str, LateSeries] = Field(description="series_id -> series")
    events: list[LateEvent] = Field(min_length=1)


DEAD_LETTER_RAW_BYTES = 16 * 1024  # of the rejected item or record a dead letter keeps in `raw`


def dead_letter_raw_bytes(value: bytes) -> str:
    """A rejected record or item, as bytes, the way a dead letter's `raw` keeps it: capped, and
    decoded with replacement characters where it is not UTF-8."""
    return value[:DEAD_LETTER_RAW_BYTES].decode(errors="replace")


def _milliseconds(at: datetime) -> datetime:
    """`at` in UTC, to the millisecond, as the pipeline writes every time it stamps."""
    at = at.astimezone(UTC)
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


class DeadLetter(BaseModel):
    """Input that was not accepted, with the reason, for inspection and replay."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1
    project: str | None
    request_id: str
    received_at: datetime
    index: int | None = Field(description="Position in the batch; null when the whole body was rejected")
    reason: str
    raw: str = Field(description="The rejected item as received, capped in size")

    # Every service makes its dead letters with `of_record` or `of_request_item`, which stamp
    # `received_at` and cap `raw` the same way for all.

    @classmethod
    def of_record(
        cls,
        topic: str,
        partition: int,
        offset: int,
        *,
        project: str | None,
        reason: str,
        raw: bytes,
        index: int | None = None,
        request_id: str | None = None,
    ) -> DeadLetter:
        """A Kafka record a consumer could not take, or the `index`th event or row of one, received
        now. `request_id` names the HTTP request that carried it where that is known; else the
        record's place `topic:partition:offset` does."""
        return cls(
            project=project,
            request_id=request_id or f"{topic}:{partition}:{offset}",
            received_at=_milliseconds(datetime.now(UTC)),
            index=index,
            reason=reason,
            raw=dead_letter_raw_bytes(raw),
        )

    @classmethod
    def of_request_item(
        cls, project: str, request_id: str, received_at: datetime, *, index: int, reason: str, raw: str
    ) -> DeadLetter:
        """The `index`th item of an HTTP request that the ingest refused; `received_at` is when the
        request arrived, `raw` the item as text."""
        return cls(
            project=project,
            request_id=request_id,
            received_at=_milliseconds(received_at),
            index=index,
            reason=reason,
            raw=dead_letter_raw_bytes(raw.encode()),
        )

    @field_serializer("received_at", when_used="json")
    def _iso_milliseconds(self, received_at: datetime) -> str:
        return received_at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def alert_fingerprint(labels: dict[str, str]) -> str:
    """An alert's fingerprint, stable across episodes, restarts and releases: a hash of its
    sorted labels but those that only route it (`channels`, `page`), for the streams worker's
    alerts and those the ingest takes from Sentry."""
    named = {key: value for key, value in labels.items() if key not in ROUTING_LABELS}
    return hashlib.sha256(orjson.dumps(named, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


class AlertRecord(BaseModel):
    """A state change of one alert on `metrics.alerts.v1`; key = `fingerprint`. Public, versioned.

    One `firing` and one `resolved` record per episode. `labels` identify the alert (Alertmanager's
    labels: alertname, severity, project, the rule's group_by values and its own labels, and the
    routing labels `channels` and `page`); `fingerprint` is derived from them but the routing labels
    and stays the same across episodes and restarts. A `severity` of `warning` (records written
    before there were five severities) reads as `high`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1
    fingerprint: str = Field(description="sha256 of the sorted labels, first 16 hex digits")
    rule: str
    state: AlertState
    severity: SeverityName
    labels: dict[str, str]
    annotations: dict[str, str] = Field(
        description="summary, description, runbook_url, impact: texts for the person on call"
    )
    value: float | None = Field(description="The observed value when the state changed; null for no data")
    threshold: float
    starts_at: datetime = Field(description="When the episode started firing (event time)")
    ends_at: datetime | None = Field(description="When it resolved; null while firing")
    evaluated_at: datetime = Field(
        description="The event-time clock of the evaluation that changed the state"
    )
    emitted_at: datetime = Field(description="Wall-clock time the record was produced")


_ALERT_ID = re.compile(r"^([0-9a-f]{16})-(\d{1,15})$")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_ms(at: datetime) -> int:
    """`at` in whole Unix milliseconds, exactly (no float); a naive time is taken as UTC."""
    aware = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
    return (aware - _EPOCH) // timedelta(milliseconds=1)


def alert_id(fingerprint: str, starts_at: datetime) -> str:
    """The id of one episode of an alert, as `alerts tail` prints it and `alerts ack` takes it:
    `<fingerprint>-<starts_at in Unix milliseconds>`."""
    return f"{fingerprint}-{epoch_ms(starts_at)}"


def parse_alert_id(text: str) -> tuple[str, datetime]:
    """(fingerprint, starts_at) of an id made by `alert_id`; ValueError naming the expected form."""
    match = _ALERT_ID.match(text.strip())
    if match is None:
        raise ValueError(
            f"{text!r} is not an alert id: <16 hex digits of the fingerprint>-<starts_at in Unix ms>, "
            "as alerts tail prints it"
        )
    return match.group(1), _EPOCH + timedelta(milliseconds=int(match.group(2)))


class AlertDelivery(BaseModel):
    """What the notifier did with one alert state change for one target, on
    `metrics.alert-deliveries.v1` (key = `fingerprint`): taken (`delivered`, after `tries`
    tries) or not (`failed`, dead-lettered). One per (state change, target) and delivery; a
    state change delivered again after a notifier restart gets a new one, which replaces it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1
    fingerprint: str
    rule: str
    project: str
    state: AlertState
    starts_at: datetime = Field(description="The episode's starts_at: with fingerprint, the alert id")
    target: str = Field(description="The target's name: alertmanager <url> or webhook <url>, no credentials")
    outcome: Literal["delivered", "failed"]
    tries: int = Field(ge=1)
    seconds: float = Field(ge=0, description="From the first try to the outcome, retries included")
    error: str = Field(default="", description="The last try's error; empty when delivered")
    finished_at: datetime = Field(description="Wall-clock time of the outcome")


class AlertAck(BaseModel):
    """An operator's acknowledgement of one episode of an alert (`cosnap-metrics alerts ack`), on
    `metrics.alert-acks.v1` (key = `fingerprint`). `noise` marks it a false positive; the newest
    acknowledgement of an episode replaces the ones before."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1
    fingerprint: str
    starts_at: datetime
    rule: str
    project: str
    noise: bool = Field(description="True: the alert was noise (a false positive)")
    note: str = Field(default="", max_length=1000)
    acked_at: datetime = Field(description="Wall-clock time of the acknowledgement")


# Records written for HTTP requests (envelopes, dead letters) name those requests in this header:
# their ids, comma-separated, at most MAX_HEADER_REQUEST_IDS of them (an envelope may hold the
# events of a thousand requests; each event carries its own in `request_id`). Consumers log with
# it where they cannot, or need not, decode the value.
REQUEST_IDS_HEADER = "cosnap-request-ids"
MAX_HEADER_REQUEST_IDS = 32


def distinct_request_ids(request_ids: Iterable[str]) -> list[str]:
    """The first MAX_HEADER_REQUEST_IDS distinct ids, in order: what a header or a log line names."""
    return list(dict.fromkeys(request_ids))[:MAX_HEADER_REQUEST_IDS]


def request_ids_header(request_ids: Iterable[str]) -> tuple[str, bytes]:
    """The header naming `request_ids` (see distinct_request_ids)."""
    return REQUEST_IDS_HEADER, ",".join(distinct_request_ids(request_ids)).encode()


def request_ids_in(headers: Iterable[tuple[str, bytes | None]] | Mapping[str, bytes] | None) -> list[str]:
    """The request ids a record's headers name (none when the header is absent)."""
    for name, value in headers.items() if isinstance(headers, Mapping) else headers or ():
        if name == REQUEST_IDS_HEADER and value:
            return value.decode(errors="replace").split(",")
    return []
