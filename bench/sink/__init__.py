"""Benchmark of the ClickHouse sink: `python -m bench.sink` (rows/s from Kafka into chDB against
a raw chDB insert of the same rows, bench/sink/raw.py). Bar and results in BENCHMARKS.md."""
