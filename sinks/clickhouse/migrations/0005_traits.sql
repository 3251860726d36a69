-- One row per identify, group or alias call of Segment's Tracking API (metrics.traits.v1,
-- docs/reference.md, "Segment Tracking API"). As in metrics.events, a retried call (same
-- message_id) collapses to its first copy: query with FINAL.
CREATE TABLE IF NOT EXISTS {database}.traits
(
    message_id      String,
    project         LowCardinality(String),
    type            LowCardinality(String) COMMENT 'identify | group | alias',
    timestamp       DateTime64(3, 'UTC') COMMENT 'call time, skew-corrected',
    received_at     DateTime64(3, 'UTC'),
    user_id         String,
    anonymous_id    String,
    group_id        String COMMENT 'group',
    previous_id     String COMMENT 'alias',
    traits          String COMMENT 'JSON object, numbers as sent: read with JSONExtract*',
    context         String COMMENT 'JSON object',
    request_id      String,
    kafka_partition UInt16,
    kafka_offset    UInt64,
    inserted_at     DateTime64(3, 'UTC') DEFAULT now64(3),
    first_copy      UInt64 MATERIALIZED 18446744073709551615 - kafka_offset COMMENT 'greatest for the lowest offset: FINAL keeps the first copy'
)
ENGINE = ReplacingMergeTree(first_copy)
ORDER BY (project, message_id);
