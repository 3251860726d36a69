"""Benchmarks (`make bench`): what each measures, its bar and its results are in BENCHMARKS.md.
A throughput is compared with a baseline measured in the same run."""
