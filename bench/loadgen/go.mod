module cosnap-metrics/bench/loadgen

go 1.22
