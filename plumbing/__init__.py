"""Operational plumbing every service shares: the Kafka producer, the status and metrics routes,
logs, Sentry, private files, the key store, backoff, webhook signing and the ClickHouse connection.

Below the services, above `schemas` (docs/architecture.md, "Layers"): it imports only `schemas`.
"""
