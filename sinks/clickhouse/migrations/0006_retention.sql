-- Retention (docs/reference.md, "Retention"): rows expire by their event time or window start,
-- raw events after 90 days, 10-second windows after 7, 1-minute windows after 90 and 1-hour
-- windows after 2 years. These are the defaults of COSNAP_RETENTION_*_DAYS; the sink replaces
-- them at start-up when the settings say otherwise. Rows already stored follow the TTL too: the
-- ALTER materializes it (a mutation rewriting the table's parts, in the background on a server).
ALTER TABLE {database}.events
    MODIFY TTL timestamp + INTERVAL 90 DAY;

ALTER TABLE {database}.late_events
    MODIFY TTL timestamp + INTERVAL 90 DAY;

ALTER TABLE {database}.aggregates
    MODIFY TTL window_start + INTERVAL 7 DAY DELETE WHERE granularity = '10s',
               window_start + INTERVAL 90 DAY DELETE WHERE granularity = '1m',
               window_start + INTERVAL 730 DAY DELETE WHERE granularity = '1h';
