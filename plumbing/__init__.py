"""Operational plumbing every service shares: Kafka, status, logs, Sentry, files, retries."""
