"""HTTP ingest: validate events, pack them into envelopes, write them durably to Kafka."""
