"""The ClickHouse sink: Kafka records into ClickHouse tables, with late corrections."""
