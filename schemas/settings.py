"""Configuration of every service, read from the environment. All variable names live here.

Each service has one frozen settings class; they share the `COSNAP_` prefix and the common
fields below so that the runner can hand the same environment to every process it starts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from schemas.rules import DEFAULT_RULES
from schemas.segment import DEFAULT_SEGMENT_MAPPING
from schemas.series import MAX_NAMES
from schemas.topics import DEFAULT_PREFIX, Topics

BROKER_COUNTS = (1, 3)  # the Kafka nodes `cosnap-metrics run` can start
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
LogFormat = Literal["json", "text"]
# What keys the envelopes of metrics.events.v1, and so what one partition holds of a project
# (docs/reference.md, "Spreading a project over partitions").
EventsKey = Literal["project", "series"]


def half_the_cores() -> int:
    """Half the machine's cores, at least one: the default share of one analyst's read."""
    return max(1, (os.cpu_count() or 2) // 2)


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COSNAP_", frozen=True, extra="ignore")

    data_dir: Path = Field(default=Path(".cosnap-data"), description="Local state: Kafka logs, chDB, keys")
    kafka_bootstrap: str = Field(
        default="127.0.0.1:9092", description="host:port of every broker, comma-separated"
    )
    kafka_replication: int = Field(
        default=1,
        ge=1,
        le=7,
        description="Replicas of each topic the pipeline creates (3 on a cluster); min.insync.replicas "
        "is their majority. `run --brokers 3` sets it",
    )
    topic_prefix: str = DEFAULT_PREFIX
    clickhouse_url: str = Field(
        default="",
        description="chdb:///path for embedded chDB, http(s)://user:pass@host:8123 for a server; "
        "empty means chDB in <data_dir>/clickhouse",
    )
    clickhouse_database: str = Field(default="metrics", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    query_url: str = Field(
        default="http://127.0.0.1:8124",
        description="The sink's read-only query service (the only way into embedded chDB while it runs)",
    )
    # Limits of every analyst's read (the query service, `cosnap-metrics query`, the dashboard),
    # set on the read session for its whole life; 0 = no limit where ClickHouse allows it.
    query_timeout_s: float = Field(default=30.0, gt=0, description="max_execution_time of a read")
    query_max_memory_bytes: int = Field(default=2_000_000_000, ge=0, description="max_memory_usage of a read")
    query_max_rows_to_read: int = Field(
        default=1_000_000_000, ge=0, description="max_rows_to_read: rows a read may scan"
    )
    query_max_bytes_to_read: int = Field(
        default=100_000_000_000, ge=0, description="max_bytes_to_read: uncompressed bytes a read may scan"
    )
    query_max_result_rows: int = Field(default=100_000, ge=0, description="max_result_rows of a read")
    query_max_result_bytes: int = Field(
        default=100_000_000, ge=0, description="max_result_bytes: uncompressed bytes a read may return"
    )
    query_max_concurrent: int = Field(
        default=4, gt=0, description="Reads at once; the query service answers 429 beyond"
    )
    query_max_threads: int = Field(
        default_factory=half_the_cores,
        ge=0,
        description="max_threads of a read: the cores one read may keep busy (0 = ClickHouse's own, "
        "every core); default half the machine's, so that a runaway read leaves the rest to the "
        "inserts, the worker and the ingest",
    )
    log_level: LogLevel = "INFO"
    log_format: LogFormat = Field(
        default="json", description="Service logs: one JSON object per line, or text for a person to read"
    )
    log_dir: Path | None = Field(
        default=None,
        description="Service logs go to <dir>/<service>.jsonl and only state changes and warnings to "
        "stderr (the runner sets <data_dir>/logs); unset = every line to stderr",
    )
    # Sentry's own variable names are accepted too, so an existing Sentry setup carries over.
    sentry_dsn: SecretStr = Field(
        default=SecretStr(""),
        validation_alias=AliasChoices("COSNAP_SENTRY_DSN", "SENTRY_DSN"),
        description="Errors go to this Sentry project; empty = Sentry off",
    )
    release: str = Field(
        default="",
        validation_alias=AliasChoices("COSNAP_RELEASE", "SENTRY_RELEASE"),
        description="The release Sentry files errors under; empty = cosnap-metrics@<package version>",
    )
    environment: str = Field(
        default="production",
        validation_alias=AliasChoices("COSNAP_ENVIRONMENT", "SENTRY_ENVIRONMENT"),
        description="The environment Sentry files errors under",
    )
    traces_sample_rate: float = Field(
        default=0.0,
        ge=0,
        le=1,
        validation_alias=AliasChoices("COSNAP_TRACES_SAMPLE_RATE", "SENTRY_TRACES_SAMPLE_RATE"),
        description="Share of the ingest's requests traced in Sentry, through Kafka to the worker and "
        "the sink; 0 = no tracing",
    )
    profiles_sample_rate: float = Field(
        default=0.0,
        ge=0,
        le=1,
        validation_alias=AliasChoices("COSNAP_PROFILES_SAMPLE_RATE", "SENTRY_PROFILES_SAMPLE_RATE"),
        description="Share of the traced transactions profiled in Sentry; 0 = no profiling",
    )
    metrics_host: str = Field(
        default="127.0.0.1",
        description="Where the workers' /metrics and /health listen (0.0.0.0 in a container)",
    )
    events_key: EventsKey = Field(
        default="project",
        description="Envelope key: project (a project on one partition) or series "
        "(project, type, name: a project spread over the partitions)",
    )

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)

    @property
    def resolved_clickhouse_url(self) -> str:
        return self.clickhouse_url or f"chdb://{(self.data_dir / 'clickhouse').resolve()}"

    @property
    def embedded_clickhouse(self) -> bool:
        return self.resolved_clickhouse_url.startswith("chdb:")

    @property
    def query_token_file(self) -> Path:
        return self.data_dir / "query-token"

    @property
    def keys_file(self) -> Path:
        return self.data_dir / "write-keys.json"


class IngestSettings(CommonSettings):
    ingest_host: str = "127.0.0.1"
    ingest_port: int = 8000
    ingest_keep_alive_s: int = Field(
        default=75,
        gt=0,
        description="How long an idle HTTP connection stays open (uvicorn's own 5 s is shorter than the idle "
        "time of clients' connection pools: a POST sent as the server closes its connection gets no answer)",
    )
    produce_timeout_s: float = Field(default=10.0, gt=0, description="Longest wait for Kafka's ack")
    max_future_skew_s: float = Field(default=600.0, ge=0, description="Reject events further ahead")
    max_event_age_s: float = Field(default=30 * 86400.0, gt=0, description="Reject events older than this")
    linger_ms: float | None = Field(
        default=None,
        ge=0,
        description="How long an envelope waits for events of concurrent requests; by default 5 ms keyed "
        "by project, 25 ms keyed by series (a request's events of each key make an envelope of their own)",
    )
    rate_limit_events_per_s: float = Field(default=10_000, ge=0, description="Per write key; 0 = no limit")
    rate_limit_burst: float = Field(default=20_000, ge=0, description="Events a key may send at once")
    health_max_lag: int = Field(
        default=10_000, ge=0, description="/health/detailed is degraded when a consumer group lags more"
    )
    health_cache_s: float = Field(default=2.0, ge=0, description="How long /health/detailed reuses a report")
    supervisor_url: str = Field(
        default="",
        description="The /health of the `cosnap-metrics run` that started this ingest (set by the runner): "
        "/health/detailed shows its processes and their restarts; empty = not supervised",
    )
    segment_mapping_file: Path = Field(
        default=DEFAULT_SEGMENT_MAPPING, description="How Segment messages become events (YAML)"
    )
    sentry_hook_max_age_s: float = Field(
        default=300.0,
        gt=0,
        description="Sentry webhooks whose Sentry-Hook-Timestamp is further off are refused",
    )

    @property
    def envelope_linger_s(self) -> float:
        """`linger_ms` in seconds, or its default for the envelope key. Keyed by series a request
        of 100 demo events makes 18 envelopes (one keyed by project): at 5 ms, 10,000 events/s
        took the 2 cores (ingest, broker, worker and sink paying per record) and the alerts of
        rules spanning keys came 2-3 s late; at 25 ms detection p99 was under 0.1 s
        (BENCHMARKS.md, "Alert detection")."""
        if self.linger_ms is not None:
            return self.linger_ms / 1000
        return 0.025 if self.events_key == "series" else 0.005


class StreamsSettings(CommonSettings):
    window_lateness_s: float = Field(default=5.0, ge=0, description="Watermark = max event time - lateness")
    window_grace_s: float = Field(default=25.0, ge=0, description="A window closes at end + grace")
    watermark_idle_s: float = Field(
        default=5.0, gt=0, description="After this long without records a partition's clock follows wall time"
    )
    tick_s: float = Field(default=0.5, gt=0, description="How often closed windows are emitted")
    checkpoint_s: float = Field(
        default=5.0, gt=0, description="Longest time between window-state checkpoints"
    )
    rules_file: Path = Field(default=DEFAULT_RULES, description="Alert rules (YAML), see schemas/rules.py")
    max_names_per_type: int = Field(
        default=MAX_NAMES,
        gt=0,
        description="Distinct names (metric, feature, revenue name, funnel:step) per project and event type; "
        "the events of further names are counted under __overflow__",
    )
    streams_metrics_port: int = Field(
        default=8125, ge=0, le=65535, description="The worker's /metrics and /health; 0 = off"
    )


class SinkSettings(CommonSettings):
    clickhouse_http_url: str = Field(
        default="http://127.0.0.1:8123",
        description="ClickHouse's HTTP interface over the embedded store, for clickhouse-connect, pandas, "
        "Grafana, the JS client (user = project, password = read key); empty = off",
    )
    clickhouse_cluster: str = Field(
        default="",
        pattern=r"^([A-Za-z_][A-Za-z0-9_]*)?$",
        description="The ClickHouse cluster (a server's remote_servers) the sink creates its tables on: "
        "replicated local tables behind Distributed ones, DDL ON CLUSTER; empty = one server or chDB",
    )
    clickhouse_min_free_bytes: int = Field(
        default=1 << 30,
        ge=0,
        description="Free space the sink's inserts leave on the store's disk "
        "(min_free_disk_bytes_to_perform_insert): below it ClickHouse refuses them and the sink "
        "retries, offsets uncommitted, so the last bytes stay for merges; 0 = off",
    )
    sink_batch_rows: int = Field(default=50_000, gt=0)
    sink_flush_ms: int = Field(default=500, gt=0, description="Longest time a row waits for its insert")
    sink_metrics_port: int = Field(
        default=8127,
        ge=0,
        le=65535,
        description="/metrics and /health with a ClickHouse server (the query service has them with chDB); "
        "0 = off",
    )
    alerting_days: int = Field(
        default=7, ge=1, le=90, description="The days back the alerting measures on /metrics cover"
    )
    alerting_refresh_s: float = Field(
        default=60.0, gt=0, description="How often the sink computes the alerting measures for /metrics"
    )
    # How long the sink's tables keep rows (docs/reference.md, "Retention"): days after the row's
    # event time or window start, each applied as the table's TTL at sink start; 0 = kept forever.
    retention_events_days: int = Field(
        default=90, ge=0, description="metrics.events and metrics.late_events, by event time; 0 = forever"
    )
    retention_10s_days: int = Field(default=7, ge=0, description="10-second windows of metrics.aggregates")
    retention_1m_days: int = Field(default=90, ge=0, description="1-minute windows of metrics.aggregates")
    retention_1h_days: int = Field(default=730, ge=0, description="1-hour windows of metrics.aggregates")

    @model_validator(mode="after")
    def _cluster_on_a_server(self) -> Self:
        if self.clickhouse_cluster and self.embedded_clickhouse:
            raise ValueError(
                "COSNAP_CLICKHOUSE_CLUSTER needs a ClickHouse server in COSNAP_CLICKHOUSE_URL, not chDB"
            )
        return self


# The rule of default-rules.yaml that only `cosnap-metrics validate`'s synthetic event fires: the
# notifier sends its alerts, and only those, to COSNAP_VALIDATE_WEBHOOK_URL.
VALIDATE_RULE = "cosnap_validate"


class NotifierSettings(CommonSettings):
    """Where `cosnap-metrics notify` delivers the records of the alerts topic, and how hard it tries."""

    alertmanager_url: str = Field(
        default="", description="Alertmanager base URL (alerts go to POST {url}/api/v2/alerts); empty = off"
    )
    webhook_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Webhook endpoints, comma-separated (or a JSON list); each gets every alert state change",
    )
    webhook_secret: SecretStr = Field(
        default=SecretStr(""), description="Standard Webhooks signing secret, whsec_<base64>"
    )
    validate_webhook_url: str = Field(
        default="",
        description="The receiver of `cosnap-metrics validate`: gets only the alerts of its rule "
        "(cosnap_validate), signed with COSNAP_WEBHOOK_SECRET; empty = off",
    )
    alert_generator_url: str = Field(
        default="",
        description="Alertmanager's link to the alert's source (a dashboard); {rule} and {fingerprint} "
        "are filled in; empty = none",
    )
    notify_max_tries: int = Field(default=5, ge=1, description="Attempts per target before the dead letter")
    notify_backoff_s: float = Field(default=1.0, gt=0, description="Wait before the first retry; doubles")
    notify_backoff_max_s: float = Field(
        default=30.0, gt=0, description="Longest wait between tries, also the cap on a target's Retry-After"
    )
    notify_timeout_s: float = Field(default=10.0, gt=0, description="Longest wait for one HTTP answer")
    notify_resend_s: float = Field(
        default=60.0,
        gt=0,
        description="Firing alerts are sent to Alertmanager again this often, or it resolves them itself",
    )
    notify_metrics_port: int = Field(
        default=8126, ge=0, le=65535, description="The notifier's /metrics and /health; 0 = off"
    )

    @field_validator("webhook_urls", mode="before")
    @classmethod
    def _split_urls(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [url.strip() for url in text.split(",") if url.strip()]
        return value

    @field_validator("alertmanager_url", "webhook_urls", "validate_webhook_url")
    @classmethod
    def _http_only(cls, value: str | list[str]) -> str | list[str]:
        for url in [value] if isinstance(value, str) else value:
            if url and not url.startswith(("http://", "https://")):
                raise ValueError(f"{url!r} is not an http(s) URL")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        # Not for COSNAP_VALIDATE_WEBHOOK_URL: the runner supplies its secret (the notifier
        # refuses to start without one).
        if self.webhook_urls and not self.webhook_secret.get_secret_value():
            raise ValueError("COSNAP_WEBHOOK_SECRET (whsec_<base64>) is needed with COSNAP_WEBHOOK_URLS")
        if self.notify_backoff_max_s < self.notify_backoff_s:
            raise ValueError("COSNAP_NOTIFY_BACKOFF_MAX_S is below COSNAP_NOTIFY_BACKOFF_S")
        return self

    @property
    def notify_enabled(self) -> bool:
        """Whether anything besides the alerts topic receives alerts (then the runner starts `notify`)."""
        return bool(self.alertmanager_url or self.webhook_urls or self.validate_webhook_url)


class RunnerSettings(IngestSettings, StreamsSettings, SinkSettings, NotifierSettings):
    kafka_version: str = "4.1.1"
    kafka_cache_dir: Path = Field(
        default=Path.home() / ".cache" / "cosnap-metrics" / "kafka",
        description="Broker jars fetched from Maven Central, shared by every checkout",
    )
    kafka_controller_port: int = 9093
    kafka_jvm_flags: str = Field(
        default="-XX:TieredStopAtLevel=1",
        description="JVM flags of every embedded Kafka node (space-separated; empty: the JVM's "
        "defaults). The default, the JIT's first tier only, starts a node with ~40 % less CPU "
        "(docs/findings.md)",
    )
    brokers: int = Field(
        default=1,
        description="Kafka nodes `run` starts: 1, or a cluster of 3 on loopback (topics with 3 replicas, "
        "min.insync.replicas 2); `run --brokers` overrides it",
    )
    run_metrics_port: int = Field(
        default=8128,
        ge=0,
        le=65535,
        description="The runner's /metrics and /health: its processes and their restarts; 0 = off",
    )

    @property
    def jvm_flags(self) -> tuple[str, ...]:
        return tuple(self.kafka_jvm_flags.split())

    @field_validator("brokers")
    @classmethod
    def _cluster_size(cls, value: int) -> int:
        # Every node is a voter of the controller quorum, which a majority keeps: with 2 nodes
        # either one down stops the cluster, so 2 is no gain over 1.
        if value not in BROKER_COUNTS:
            raise ValueError(f"{value} brokers: `run` starts {' or '.join(map(str, BROKER_COUNTS))}")
        return value
