"""Peers of the streams worker: `python -m bench.peers` runs the same windowed aggregation on
Quix Streams (bench/peers/quix_app.py, in a virtualenv of its own) and on a naive Faust agent
(bench/peers/faust_app.py) beside the worker. Bar and results in BENCHMARKS.md.

Nothing here imports more than the standard library: Quix's virtualenv imports this package."""
