"""Configuration of every service, read from the environment. All variable names live here.

Each service has one frozen settings class; they share the `COSNAP_` prefix and the common
fields below so that the runner can hand the same environment to every process it starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.rules import DEFAULT_RULES
from schemas.topics import DEFAULT_PREFIX, Topics

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COSNAP_", frozen=True, extra="ignore")

    data_dir: Path = Field(default=Path(".cosnap-data"), description="Local state: Kafka logs, chDB, keys")
    kafka_bootstrap: str = "127.0.0.1:9092"
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
    log_level: LogLevel = "INFO"

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
    produce_timeout_s: float = Field(default=10.0, gt=0, description="Longest wait for Kafka's ack")
    max_future_skew_s: float = Field(default=600.0, ge=0, description="Reject events further ahead")
    max_event_age_s: float = Field(default=30 * 86400.0, gt=0, description="Reject events older than this")
    linger_ms: float = Field(
        default=5.0, ge=0, description="How long an envelope waits for events of concurrent requests"
    )
    rate_limit_events_per_s: float = Field(default=10_000, ge=0, description="Per write key; 0 = no limit")
    rate_limit_burst: float = Field(default=20_000, ge=0, description="Events a key may send at once")


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


class SinkSettings(CommonSettings):
    sink_batch_rows: int = Field(default=50_000, gt=0)
    sink_flush_ms: int = Field(default=500, gt=0, description="Longest time a row waits for its insert")


class RunnerSettings(IngestSettings, StreamsSettings, SinkSettings):
    kafka_version: str = "4.1.1"
    kafka_cache_dir: Path = Field(
        default=Path.home() / ".cache" / "cosnap-metrics" / "kafka",
        description="Broker jars fetched from Maven Central, shared by every checkout",
    )
    kafka_controller_port: int = 9093
