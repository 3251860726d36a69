-- How alerting itself did (docs/reference.md, "Alerting measured"): what the notifier did with each
-- alert state change per target (metrics.alert-deliveries.v1), and operators' acknowledgements
-- (metrics.alert-acks.v1). Both replace on their key: query with FINAL.
CREATE TABLE IF NOT EXISTS {database}.alert_deliveries
(
    fingerprint String,
    rule        LowCardinality(String),
    project     LowCardinality(String),
    state       LowCardinality(String) COMMENT 'firing | resolved: the state change delivered',
    starts_at   DateTime64(3, 'UTC') COMMENT 'the episode: with fingerprint, the alert id',
    target      LowCardinality(String) COMMENT 'alertmanager <url> | webhook <url>',
    outcome     LowCardinality(String) COMMENT 'delivered | failed (dead-lettered)',
    tries       UInt16,
    seconds     Float64 COMMENT 'first try to outcome, retries included',
    error       String COMMENT 'the error of the last try, empty when delivered',
    finished_at DateTime64(3, 'UTC'),
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(finished_at)
PARTITION BY toYYYYMM(starts_at)
ORDER BY (project, fingerprint, starts_at, state, target);

CREATE TABLE IF NOT EXISTS {database}.alert_acks
(
    fingerprint String,
    starts_at   DateTime64(3, 'UTC'),
    rule        LowCardinality(String),
    project     LowCardinality(String),
    noise       Bool COMMENT 'a false positive',
    note        String,
    acked_at    DateTime64(3, 'UTC'),
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(acked_at)
ORDER BY (project, fingerprint, starts_at);
