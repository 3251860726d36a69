# The two commands of the README: `make run` and `make test`. Both set up .venv first.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup native run test test-durations lint bench clean alertmanager browser prometheus clickhouse-js clickhouse-go segment-node check docker-compose

$(STAMP): pyproject.toml constraints.txt sdk/python/pyproject.toml
	@command -v java >/dev/null || { echo "make: Java 17+ is needed for the embedded Kafka broker"; exit 1; }
	@command -v mvn >/dev/null || { echo "make: Maven (mvn) is needed to fetch the Kafka broker"; exit 1; }
	@command -v node >/dev/null || { echo "make: Node.js 18+ is needed to test the JavaScript SDK"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]' -e sdk/python
	@touch $(STAMP)

setup: $(STAMP)

# The streams worker's per-event modules, compiled with mypyc (with the C compiler `cc`): each
# extension sits beside its source and Python imports it first. Rebuilt whenever a source
# changes; without them the same modules run as plain Python (BENCHMARKS.md: ~20 % slower).
NATIVE_SOURCES := streams/sketch.py streams/watermark.py streams/series.py streams/windows.py streams/alerts.py
NATIVE := build/native.stamp

$(NATIVE): $(STAMP) $(NATIVE_SOURCES)
	@command -v cc >/dev/null || { echo "make: a C compiler (cc) is needed to compile the streams modules"; exit 1; }
	$(BIN)/python -c 'import sys; from mypyc.build import mypycify; from setuptools import setup; \
	  setup(name="cosnap-streams-native", script_args=["-q", "build_ext", "--inplace", "--force"], \
	        ext_modules=mypycify(sys.argv[1:], group_name="streams.native"))' $(NATIVE_SOURCES)
	@touch $@

native: $(NATIVE)

run: setup native
	$(BIN)/cosnap-metrics run

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The alert delivery tests start a real Alertmanager: Debian's package (we run as root).
# `make run` does not need it.
alertmanager:
	@command -v prometheus-alertmanager >/dev/null || { apt-get update -qq \
	  && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus-alertmanager; }

# The observability test scrapes the running pipeline with Debian's Prometheus (and lints every
# /metrics with its promtool). `make run` does not need it.
prometheus:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || { apt-get update -qq \
	  && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }

# tests/test_compose.py checks docker-compose.yml with Debian's docker-compose (`config`, no
# Docker engine needed). `make run` does not need it.
docker-compose:
	@command -v docker-compose >/dev/null || { apt-get update -qq \
	  && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose; }

# Lint, types and the tests that need no Kafka broker (those marked `kafka` or `e2e` are left
# out), in three processes, the property tests with a fifth of their examples (random ones: each
# run draws others; make test draws every example from a fixed seed). The official ClickHouse
# clients' tests read chDB through the HTTP interface, no broker: their clients are built first.
check: lint prometheus docker-compose clickhouse-js clickhouse-go
	COSNAP_FUZZ_SCALE=0.2 $(BIN)/pytest -q -n 3 -m "not kafka and not e2e"

# The dashboard test drives Debian's Chromium through its chromedriver (no browser download).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { apt-get update -qq \
	  && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver; }

# The ClickHouse HTTP interface is tested with the official JavaScript client (npm, pinned by
# its package-lock.json).
CLICKHOUSE_JS := tests/sinks/query/clickhouse_js
clickhouse-js: $(CLICKHOUSE_JS)/node_modules/.package-lock.json
$(CLICKHOUSE_JS)/node_modules/.package-lock.json: $(CLICKHOUSE_JS)/package-lock.json
	npm ci --prefix $(CLICKHOUSE_JS) --no-audit --no-fund --loglevel=error

# ... and with clickhouse-go over HTTP, the client of Grafana's ClickHouse plugin (Go modules
# pinned by go.mod/go.sum, fetched from the Go module proxy).
CLICKHOUSE_GO := tests/sinks/query/clickhouse_go
clickhouse-go: $(CLICKHOUSE_GO)/clickhouse-go-read
$(CLICKHOUSE_GO)/clickhouse-go-read: $(CLICKHOUSE_GO)/main.go $(CLICKHOUSE_GO)/go.mod $(CLICKHOUSE_GO)/go.sum
	@command -v go >/dev/null || { echo "make: Go is needed to test the ClickHouse interface with clickhouse-go"; exit 1; }
	cd $(CLICKHOUSE_GO) && go build -o clickhouse-go-read .

# Segment's Tracking API on the ingest is tested with Segment's own Node library (npm, pinned by
# its package-lock.json).
SEGMENT_NODE := tests/ingest/segment_node
segment-node: $(SEGMENT_NODE)/node_modules/.package-lock.json
$(SEGMENT_NODE)/node_modules/.package-lock.json: $(SEGMENT_NODE)/package-lock.json
	npm ci --prefix $(SEGMENT_NODE) --no-audit --no-fund --loglevel=error

# Test files run in TEST_WORKERS processes (pytest-xdist, whole files each, so a file's shared
# stack is started once) against one broker the controller starts, the longest files first by
# tests/durations.json (tests/conftest.py). The suite waits on its pipelines more than it
# computes: 4 workers keep the 2 cores busy. `make test-durations` runs it and rewrites that file.
TEST_WORKERS ?= 4
PARALLEL := -n $(TEST_WORKERS) --dist loadfile
TEST_DEPS := lint native alertmanager browser prometheus docker-compose clickhouse-js clickhouse-go segment-node
test: $(TEST_DEPS)
	$(BIN)/pytest $(PARALLEL) --durations=15

test-durations: $(TEST_DEPS)
	$(BIN)/pytest $(PARALLEL) --store-durations

bench: setup native
	$(BIN)/python -m bench.ingest
	-$(BIN)/python -m bench.streams
	-$(BIN)/python -m bench.streams.memory
	$(BIN)/python -m bench.alerts
	$(BIN)/python -m bench.import
	$(BIN)/python -m bench.sink
	-$(BIN)/python -m bench.peers
	-$(BIN)/python -m bench.pipeline

clean:
	rm -rf $(VENV) build streams/*.so .cosnap-data .pytest_cache .mypy_cache .ruff_cache $(CLICKHOUSE_JS)/node_modules $(CLICKHOUSE_GO)/clickhouse-go-read \
	  $(SEGMENT_NODE)/node_modules
