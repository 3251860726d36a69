"""Whole-pipeline capacity: `python -m bench.pipeline` (open-loop load through ingest, Kafka,
worker and sink at rising rates, freshness of every event). Bar and results in BENCHMARKS.md."""
