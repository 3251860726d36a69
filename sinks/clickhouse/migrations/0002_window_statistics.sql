-- Means, quantiles and sketches of performance series, and step-to-step conversion.

ALTER TABLE {database}.aggregates
    ADD COLUMN IF NOT EXISTS mean Float64 AFTER max,
    ADD COLUMN IF NOT EXISTS p50 Nullable(Float64) AFTER mean,
    ADD COLUMN IF NOT EXISTS p90 Nullable(Float64) AFTER p50,
    ADD COLUMN IF NOT EXISTS p95 Nullable(Float64) AFTER p90,
    ADD COLUMN IF NOT EXISTS p99 Nullable(Float64) AFTER p95,
    ADD COLUMN IF NOT EXISTS sketch_positive Map(Int32, UInt64) COMMENT 'DDSketch bins, accuracy 0.01' AFTER p99,
    ADD COLUMN IF NOT EXISTS sketch_negative Map(Int32, UInt64) AFTER sketch_positive,
    ADD COLUMN IF NOT EXISTS sketch_zeros UInt64 AFTER sketch_negative,
    ADD COLUMN IF NOT EXISTS step_index Nullable(UInt16) COMMENT 'conversion series' AFTER sketch_zeros,
    ADD COLUMN IF NOT EXISTS ratio_to_previous Nullable(Float64) COMMENT 'conversion series' AFTER step_index;
