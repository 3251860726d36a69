"""Contracts: every record that crosses a process boundary (HTTP bodies, Kafka records,
ClickHouse rows, environment) is defined here and only here."""
