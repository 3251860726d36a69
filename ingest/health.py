"""`GET /health/detailed` of the ingest API: Kafka, the pipeline's topics, ClickHouse, the lag of
the pipeline's consumer groups and the process's memory, folded into one status
(schemas.health.DetailedHealth says the rule), each check timed.

The checks block (kafka-python's admin client, HTTP), so they run on a worker thread or
asynchronously, each with a bounded timeout; a report is reused for `health_cache_s`, so a
scraper polling the endpoint costs one round of checks per period however often it asks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TypeVar
from urllib.parse import urlsplit

import httpx
from kafka import OffsetSpec
from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError
from pydantic import ValidationError

from plumbing.status import elapsed_ms, process_health, with_memory
from schemas.health import (
    Check,
    ClickHouseHealth,
    DetailedHealth,
    GroupLag,
    HealthStatus,
    KafkaHealth,
    ServiceHealth,
)
from schemas.settings import IngestSettings
from schemas.topics import Topics

T = TypeVar("T")
TIMEOUT_S = 2.0  # per Kafka request and per HTTP call; a round of checks ends within ~3 of them


def consumer_groups(topics: Topics) -> list[str]:
    """The groups whose lag is watched: the sink, the streams worker and the notifier."""
    return [f"{topics.internal}sink", f"{topics.internal}streams", f"{topics.internal}notify"]


def check_kafka(bootstrap: str, topics: Topics) -> tuple[KafkaHealth, list[GroupLag]]:
    """Reachability, missing topics and per-group lag, from one short-lived admin client.
    Blocks up to a few TIMEOUT_S; never raises for Kafka trouble (it is in the result)."""
    timeout_ms = int(TIMEOUT_S * 1000)
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id="cosnap-health",
            bootstrap_timeout_ms=timeout_ms,
            request_timeout_ms=timeout_ms,
        )
    except KafkaError as exc:
        return KafkaHealth(reachable=False, error=repr(exc)), []
    try:
        present = set(admin.list_topics())
        missing = [spec.name for spec in topics.specs() if spec.name not in present]
        return KafkaHealth(reachable=True, missing_topics=missing), group_lags(admin, consumer_groups(topics))
    except KafkaError as exc:
        return KafkaHealth(reachable=True, error=repr(exc)), []
    finally:
        admin.close()


def group_lags(admin: KafkaAdminClient, groups: list[str]) -> list[GroupLag]:
    """End offsets minus committed offsets, for the partitions each group has committed."""
    committed = admin.list_group_offsets(groups)
    partitions = {tp for offsets in committed.values() for tp, at in offsets.items() if at.offset >= 0}
    ends = admin.list_partition_offsets({tp: OffsetSpec.LATEST for tp in partitions}) if partitions else {}
    lags = []
    for group in groups:
        behind = {
            f"{tp.topic}[{tp.partition}]": max(ends[tp].offset - at.offset, 0)
            for tp, at in sorted(committed.get(group, {}).items())
            if tp in ends
        }
        lags.append(GroupLag(group=group, lag=sum(behind.values()) if behind else None, partitions=behind))
    return lags


async def check_clickhouse(settings: IngestSettings, client: httpx.AsyncClient) -> ClickHouseHealth:
    """With chDB, the sink owns the database: ask its query service, which queries chDB and
    reports its consumer. With a server, ClickHouse's own `/ping`."""
    if settings.embedded_clickhouse:
        via = f"{settings.query_url}/health"
        try:
            response = await client.get(via)
            sink = ServiceHealth.model_validate_json(response.content)
        except (httpx.HTTPError, ValidationError) as exc:
            return ClickHouseHealth(answers=False, via=via, error=repr(exc))
        answers = response.status_code == 200
        return ClickHouseHealth(
            answers=answers, via=via, sink=sink, error=None if answers else "; ".join(sink.problems)
        )
    parts = urlsplit(settings.resolved_clickhouse_url)
    via = f"{parts.scheme}://{parts.hostname}:{parts.port or 8123}/ping"
    try:
        response = await client.get(via)
    except httpx.HTTPError as exc:
        return ClickHouseHealth(answers=False, via=via, error=repr(exc))
    if response.status_code != 200:
        return ClickHouseHealth(answers=False, via=via, error=f"HTTP {response.status_code}")
    return ClickHouseHealth(answers=True, via=via)


async def check_supervisor(settings: IngestSettings, client: httpx.AsyncClient) -> ServiceHealth | None:
    """The report of the runner that started this ingest (its processes, their restarts), or None
    when it runs on its own; a runner that does not answer is a report saying so."""
    if not settings.supervisor_url:
        return None
    try:
        return ServiceHealth.model_validate_json((await client.get(settings.supervisor_url)).content)
    except (httpx.HTTPError, ValidationError) as exc:
        return ServiceHealth(
            service="run", status="unhealthy", problems=[f"the runner does not answer: {exc!r}"]
        )


def verdict(
    kafka: KafkaHealth, clickhouse: ClickHouseHealth, lags: list[GroupLag], max_lag: int
) -> tuple[HealthStatus, list[str]]:
    """The overall status and its reasons (the rule of schemas.health.DetailedHealth)."""
    fatal = []
    if not kafka.reachable:
        fatal.append(f"Kafka unreachable: {kafka.error}")
    if kafka.missing_topics:
        fatal.append(f"topics missing: {', '.join(kafka.missing_topics)}")
    problems = list(fatal)
    if kafka.reachable and kafka.error:
        problems.append(f"consumer lag unknown: {kafka.error}")
    if not clickhouse.answers:
        problems.append(f"ClickHouse does not answer ({clickhouse.via}): {clickhouse.error}")
    elif clickhouse.sink is not None and clickhouse.sink.status != "healthy":
        problems += [f"sink: {problem}" for problem in clickhouse.sink.problems]
    problems += [
        f"group {group.group} lags {group.lag} records (over {max_lag})"
        for group in lags
        if group.lag is not None and group.lag > max_lag
    ]
    if fatal:
        return "unhealthy", problems
    return ("degraded" if problems else "healthy"), problems


def check_statuses(
    kafka: KafkaHealth, clickhouse: ClickHouseHealth, supervisor: ServiceHealth | None
) -> dict[str, HealthStatus]:
    """Each check's own status, by the rule of `verdict`: Kafka unreachable or topics missing is
    unhealthy, its lag unknown degraded; ClickHouse not answering or the sink not healthy is
    degraded; the runner's report as it says."""
    statuses: dict[str, HealthStatus] = {
        "kafka": "unhealthy"
        if not kafka.reachable or kafka.missing_topics
        else "degraded"
        if kafka.error
        else "healthy",
        "clickhouse": "degraded"
        if not clickhouse.answers or (clickhouse.sink is not None and clickhouse.sink.status != "healthy")
        else "healthy",
    }
    if supervisor is not None:
        statuses["supervisor"] = supervisor.status
    return statuses


async def timed(check: Awaitable[T]) -> tuple[T, float]:
    """`check`'s result and how long it took, in milliseconds."""
    started = time.perf_counter()
    result = await check
    return result, elapsed_ms(started)


class DetailedHealthCheck:
    """Runs the checks of `GET /health/detailed` and caches the report. Called on the event loop;
    never blocks it and never raises."""

    def __init__(self, settings: IngestSettings) -> None:
        self._settings = settings
        self._lock = asyncio.Lock()
        self._report: DetailedHealth | None = None
        self._checked_at = 0.0

    async def report(self) -> DetailedHealth:
        """The cached report while fresh, else a new one; callers arriving during a round wait for it."""
        async with self._lock:
            fresh = time.monotonic() - self._checked_at < self._settings.health_cache_s
            if self._report is None or not fresh:
                self._report = await self._check()
                self._checked_at = time.monotonic()
            return self._report

    async def _kafka(self) -> tuple[KafkaHealth, list[GroupLag]]:
        limit = 3 * TIMEOUT_S  # the admin client's own timeouts end it sooner; this is the backstop
        round_ = asyncio.to_thread(check_kafka, self._settings.kafka_bootstrap, self._settings.topics)
        try:
            return await asyncio.wait_for(round_, timeout=limit)
        except TimeoutError:
            return KafkaHealth(reachable=False, error=f"no answer within {limit:.0f}s"), []

    async def _check(self) -> DetailedHealth:
        settings = self._settings
        async with httpx.AsyncClient(timeout=TIMEOUT_S) as client:
            (
                ((kafka, lags), kafka_ms),
                (clickhouse, clickhouse_ms),
                (supervisor, supervisor_ms),
            ) = await asyncio.gather(
                timed(self._kafka()),
                timed(check_clickhouse(settings, client)),
                timed(check_supervisor(settings, client)),
            )
        took = {"kafka": kafka_ms, "clickhouse": clickhouse_ms, "supervisor": supervisor_ms}
        checks = {
            name: Check(status=status, responseTime=took[name])
            for name, status in check_statuses(kafka, clickhouse, supervisor).items()
        }
        status, problems = verdict(kafka, clickhouse, lags, settings.health_max_lag)
        if supervisor is not None and supervisor.problems:
            problems += [f"run: {problem}" for problem in supervisor.problems]
            status = "degraded" if status == "healthy" else status
        facts = process_health(checks)
        status, problems = with_memory(status, problems, facts.memory)
        return DetailedHealth(
            **facts.model_dump(),
            status=status,
            problems=problems,
            checked_at=facts.timestamp,
            kafka=kafka,
            clickhouse=clickhouse,
            consumer_lag=lags,
            supervisor=supervisor,
        )
