"""The query service: analysts' read-only SQL and the dashboards over the embedded store."""
