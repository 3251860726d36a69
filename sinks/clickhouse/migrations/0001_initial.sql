-- The tables of docs/reference.md, "ClickHouse tables". Analysts query these names: add columns in later migrations, rename none.

-- One row per accepted event. ReplacingMergeTree on (project, event_id) makes a redelivered or
-- retried event collapse to one row; query with FINAL (or GROUP BY event_id) for exact counts.
CREATE TABLE IF NOT EXISTS {database}.events
(
    event_id        String,
    project         LowCardinality(String),
    type            LowCardinality(String),
    timestamp       DateTime64(3, 'UTC') COMMENT 'event time, skew-corrected',
    received_at     DateTime64(3, 'UTC'),
    user_id         String,
    anonymous_id    String,
    session_id      String,
    source          LowCardinality(String),
    environment     LowCardinality(String),
    release         LowCardinality(String),
    name            LowCardinality(String) COMMENT 'revenue',
    amount          Nullable(Decimal(38, 9)) COMMENT 'revenue, exact',
    currency        LowCardinality(String) COMMENT 'revenue, ISO 4217',
    funnel          LowCardinality(String) COMMENT 'conversion',
    step            LowCardinality(String) COMMENT 'conversion',
    step_index      Nullable(UInt16) COMMENT 'conversion',
    feature         LowCardinality(String) COMMENT 'feature',
    action          LowCardinality(String) COMMENT 'feature',
    metric          LowCardinality(String) COMMENT 'performance',
    value           Nullable(Float64) COMMENT 'performance',
    unit            LowCardinality(String) COMMENT 'performance',
    tags            Map(LowCardinality(String), String),
    request_id      String,
    kafka_partition UInt16,
    kafka_offset    UInt64,
    inserted_at     DateTime64(3, 'UTC') DEFAULT now64(3),
    INDEX idx_timestamp timestamp TYPE minmax GRANULARITY 1,
    INDEX idx_type type TYPE set(8) GRANULARITY 1
)
ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toYYYYMM(timestamp)
ORDER BY (project, event_id);

-- One row per (series, granularity, window). A rewrite of a window replaces the row (the
-- newest emitted_at wins), never adds to it.
CREATE TABLE IF NOT EXISTS {database}.aggregates
(
    project      LowCardinality(String),
    type         LowCardinality(String),
    name         LowCardinality(String) COMMENT 'revenue name, metric, feature, or funnel:step',
    currency     LowCardinality(String) COMMENT 'revenue series only',
    dims         Map(LowCardinality(String), String),
    series_id    String,
    granularity  LowCardinality(String) COMMENT '10s, 1m or 1h',
    window_start DateTime('UTC'),
    window_end   DateTime('UTC'),
    count        UInt64,
    sum          Decimal(38, 9),
    min          Decimal(38, 9),
    max          Decimal(38, 9),
    emitted_at   DateTime64(3, 'UTC'),
    inserted_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(emitted_at)
PARTITION BY toYYYYMM(window_start)
ORDER BY (project, type, name, series_id, granularity, window_start);
