-- One row per alert state change of metrics.alerts.v1 (docs/reference.md, "ClickHouse tables"). A record delivered twice
-- (a sink replay) collapses on (fingerprint, starts_at, state): query with FINAL for history.
CREATE TABLE IF NOT EXISTS {database}.alerts
(
    fingerprint  String,
    rule         LowCardinality(String),
    state        LowCardinality(String) COMMENT 'firing | resolved',
    severity     LowCardinality(String),
    project      LowCardinality(String),
    labels       Map(LowCardinality(String), String),
    annotations  Map(LowCardinality(String), String),
    value        Nullable(Float64) COMMENT 'observed when the state changed, null for no data',
    threshold    Float64,
    starts_at    DateTime64(3, 'UTC'),
    ends_at      Nullable(DateTime64(3, 'UTC')),
    evaluated_at DateTime64(3, 'UTC'),
    emitted_at   DateTime64(3, 'UTC'),
    inserted_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toYYYYMM(starts_at)
ORDER BY (project, fingerprint, starts_at, state);
