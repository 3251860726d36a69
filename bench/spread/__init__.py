"""One project spread over partitions, folded by 1, 2 and 3 workers: `python -m bench.spread`."""
