"""Sinks: Kafka topics into ClickHouse tables, batched, committing offsets only after inserts."""
