"""`python -m bench.import`: a million events backfilled through the whole pipeline."""
