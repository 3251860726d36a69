-- Late events counted exactly, retries counted once (docs/reference.md, "Late events").
--
-- 1. metrics.events keeps the FIRST copy of an event (the lowest Kafka offset), whatever the
--    timestamp of a retry: the version column ranks copies by offset, and the table has one
--    partition, so copies whose timestamps fall in different months still collapse. The streams
--    worker counts that same first copy. The table is rebuilt (a partition key cannot change):
--    a copy, then a swap. Each statement may run again after a crash part-way.
DROP TABLE IF EXISTS {database}.events_0003;

CREATE TABLE IF NOT EXISTS {database}.events_0004
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
    first_copy      UInt64 MATERIALIZED 18446744073709551615 - kafka_offset COMMENT 'greatest for the lowest offset: FINAL keeps the first copy',
    INDEX idx_timestamp timestamp TYPE minmax GRANULARITY 1,
    INDEX idx_type type TYPE set(8) GRANULARITY 1
)
ENGINE = ReplacingMergeTree(first_copy)
ORDER BY (project, event_id);

INSERT INTO {database}.events_0004
    (event_id, project, type, timestamp, received_at, user_id, anonymous_id, session_id, source,
     environment, release, name, amount, currency, funnel, step, step_index, feature, action, metric,
     value, unit, tags, request_id, kafka_partition, kafka_offset, inserted_at)
SELECT event_id, project, type, timestamp, received_at, user_id, anonymous_id, session_id, source,
       environment, release, name, amount, currency, funnel, step, step_index, feature, action, metric,
       value, unit, tags, request_id, kafka_partition, kafka_offset, inserted_at
FROM {database}.events;

RENAME TABLE {database}.events TO {database}.events_0003, {database}.events_0004 TO {database}.events;

DROP TABLE IF EXISTS {database}.events_0003;

-- 2. A window is its on-time row (part 0, emitted once final) plus correction rows for the events
--    that arrived after it closed: part = (events partition << 40) | (offset + 1) of the record
--    that carried them, so a replay of that record replaces its correction and never adds one.
ALTER TABLE {database}.aggregates
    ADD COLUMN IF NOT EXISTS part UInt64 COMMENT '0 for the on-time row, else the correction of one events record' AFTER window_end,
    MODIFY ORDER BY (project, type, name, series_id, granularity, window_start, part);

-- 3. One row per late event: how late, and whether it counted (0: a retry of an event already counted).
CREATE TABLE IF NOT EXISTS {database}.late_events
(
    project         LowCardinality(String),
    event_id        String,
    type            LowCardinality(String),
    name            LowCardinality(String) COMMENT 'the series name, as in aggregates',
    series_id       String,
    timestamp       DateTime64(3, 'UTC'),
    received_at     DateTime64(3, 'UTC'),
    folded_at       DateTime64(3, 'UTC') COMMENT 'when the worker found its 10 s window closed',
    delay_s         Float64 COMMENT 'folded_at - timestamp',
    counted         UInt8 COMMENT '1 if a correction added it to the windows, 0 for a copy of an event counted before',
    kafka_partition UInt16,
    kafka_offset    UInt64,
    inserted_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toYYYYMM(timestamp)
ORDER BY (project, kafka_partition, kafka_offset, event_id);

-- 4. One row per (series, granularity, window), its parts merged: what analysts and dashboards read.
--    Quantiles come from the merged DDSketch bins (relative accuracy 1 %), conversion ratios are
--    recomputed from the merged counts; late_count says how many events corrections added.
CREATE VIEW IF NOT EXISTS {database}.windows AS
SELECT
    project, type, name, currency, dims, series_id, granularity, window_start, window_end,
    merged_count AS count, merged_sum AS sum, merged_min AS min, merged_max AS max,
    toFloat64(merged_sum) / merged_count AS mean,
    if(type = 'performance', arrayElement(qs, 1), NULL) AS p50,
    if(type = 'performance', arrayElement(qs, 2), NULL) AS p90,
    if(type = 'performance', arrayElement(qs, 3), NULL) AS p95,
    if(type = 'performance', arrayElement(qs, 4), NULL) AS p99,
    merged_positive AS sketch_positive, merged_negative AS sketch_negative, merged_zeros AS sketch_zeros,
    merged_step_index AS step_index,
    if(type = 'conversion' AND step_index IS NOT NULL,
       merged_count / nullIf(arrayFirst((c, i) -> i + 1 = assumeNotNull(merged_step_index),
                                        groupArray(merged_count) OVER funnel_window,
                                        groupArray(assumeNotNull(merged_step_index)) OVER funnel_window), 0),
       NULL) AS ratio_to_previous,
    late_count, parts, last_emitted_at AS emitted_at
FROM
(
    SELECT
        project, type, name, currency, dims, series_id, granularity, window_start,
        any(window_end) AS window_end,
        sum(count) AS merged_count, sum(sum) AS merged_sum, min(min) AS merged_min, max(max) AS merged_max,
        sumMap(sketch_positive) AS merged_positive,
        sumMap(sketch_negative) AS merged_negative,
        sum(sketch_zeros) AS merged_zeros,
        max(step_index) AS merged_step_index,
        sumIf(count, part != 0) AS late_count,
        count() AS parts,
        max(emitted_at) AS last_emitted_at,
        -- the sketch as one ascending list of bin values and their counts
        arrayReverseSort(mapKeys(merged_negative)) AS neg_keys,
        arraySort(mapKeys(merged_positive)) AS pos_keys,
        arrayConcat(arrayMap(k -> -2 * pow(1.01 / 0.99, k) / (1.01 / 0.99 + 1), neg_keys),
                    [0.], arrayMap(k -> 2 * pow(1.01 / 0.99, k) / (1.01 / 0.99 + 1), pos_keys)) AS bin_values,
        arrayCumSum(arrayConcat(arrayMap(k -> merged_negative[k], neg_keys), [merged_zeros],
                                arrayMap(k -> merged_positive[k], pos_keys))) AS cumulative,
        arrayMap(q -> arrayElement(bin_values,
                                   if(arrayFirstIndex(c -> c > q * (arrayElement(cumulative, -1) - 1), cumulative) = 0,
                                      length(bin_values),
                                      arrayFirstIndex(c -> c > q * (arrayElement(cumulative, -1) - 1), cumulative))),
                 [0.5, 0.9, 0.95, 0.99]) AS qs
    FROM {database}.aggregates FINAL
    GROUP BY project, type, name, currency, dims, series_id, granularity, window_start
)
WINDOW funnel_window AS (PARTITION BY project, type, splitByChar(':', name)[1], granularity, window_start);
