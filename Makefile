# Kairos: every README command is a target here. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

UV := $(shell command -v uv 2>/dev/null)
ifeq ($(UV),)
UV := python3 -m uv
endif
RUN := $(UV) run --frozen
export PYTHONHASHSEED ?= 0

.PHONY: help install lint test unit parity demo bench bench-sim bench-spark bench-stream bench-serving apply feast-apply backfill \
	stream train serve bento simulate import-example clean

help: ## List the commands
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

.venv/.kairos-synced: pyproject.toml uv.lock
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install -q "uv==0.13.8"
	$(UV) sync --frozen
	@touch $@

install: .venv/.kairos-synced ## Install the locked environment (uv, Python 3.11)

lint: install ## ruff, mypy and the import-layer contracts (import-linter, in pyproject.toml)
	$(RUN) ruff check .
	$(RUN) mypy
	$(RUN) lint-imports

test: install lint ## The whole suite: lint, types, unit, data, parity, model, dags and integration tests
	$(RUN) pytest -q

unit: install ## Fast unit tests only
	$(RUN) pytest -q tests/unit

PARITY_USERS ?= 300
PARITY_DAYS ?= 6

parity: install ## Parity tests, then `kairos parity`: reference vs Spark vs Bytewax vs Feast per feature (PARITY_USERS, PARITY_DAYS)
	$(RUN) pytest -q tests/parity
	$(RUN) kairos parity --users $(PARITY_USERS) --days $(PARITY_DAYS)

demo: install ## `kairos demo`: the main job end to end on the embedded defaults (SQLite, local parquet)
	$(RUN) kairos demo

BENCH_EVENTS ?= 10000000
BENCH_ROWS ?= 1000000

bench: bench-sim bench-spark bench-stream bench-serving ## All benchmarks (BENCH_EVENTS, BENCH_ROWS); JSON results land in bench/results/

bench-sim: install ## Simulator throughput at BENCH_EVENTS events, against a parquet-write floor
	$(RUN) python -m bench.bench_simulator --events $(BENCH_EVENTS)

bench-spark: install ## Spark build of BENCH_EVENTS events and a BENCH_ROWS training set, against Feast's offline store
	$(RUN) python -m bench.bench_spark --events $(BENCH_EVENTS) --rows $(BENCH_ROWS)

bench-stream: install ## Bytewax throughput (1k/100k/1M active users, 1 and 2 workers) and freshness into Feast
	$(RUN) python -m bench.bench_stream --big-users 1000000

bench-serving: install ## Open-loop load on POST /v1/score (100/300/1,000 req/s, 100k users) vs floors (BENCH_SERVING_ARGS=--quick)
	$(RUN) python -m bench.bench_serving $(BENCH_SERVING_ARGS)

apply: install ## `kairos apply`: generate the Feast repo from the specs and run `feast apply`
	$(RUN) kairos apply

feast-apply: apply ## The same as `make apply`

backfill: install ## `kairos backfill`: Spark builds every offline table from var/data/events (START=, END=: YYYY-MM-DD)
	$(RUN) kairos backfill $${START:+--start $$START} $${END:+--end $$END}

stream: install ## `kairos stream`: Bytewax replays the event log into the changelog and the Feast online store
	$(RUN) kairos stream

train: install ## `kairos train`: both models on var/data/events, tracked in MLflow, through the promotion gate
	$(RUN) kairos train

serve: install ## `kairos serve`: bentoml serve serving.service:Kairos on port 3000 (PORT=)
	$(RUN) kairos serve --port $${PORT:-3000}

bento: install ## `bentoml build`: the service as a bento, its requirements exported from uv.lock
	@mkdir -p var
	$(UV) export --frozen --no-dev --no-emit-project --no-hashes --quiet -o var/bento-requirements.txt
	$(RUN) bentoml build

simulate: install ## `kairos simulate`: an event log into var/data/events (USERS=2000 DAYS=14)
	$(RUN) kairos simulate --users $${USERS:-2000} --days $${DAYS:-14}

RETAIL_DIR ?= var/retail
RETAIL_CUSTOMERS ?= 2000

import-example: install ## A synthetic retailer export (RETAIL_CUSTOMERS) -> `kairos import` -> `kairos train --task repurchase_90d` in RETAIL_DIR
	$(RUN) kairos import --mapping conf/importers/retail_transactions.yaml \
		--input tests/golden/retail_transactions.csv --out $(RETAIL_DIR)/golden-events
	$(RUN) python -m pipelines.ingest.transactions --customers $(RETAIL_CUSTOMERS) --months 18 \
		--out $(RETAIL_DIR)/export.csv
	KAIROS__DATA_DIR=$(RETAIL_DIR) $(RUN) kairos import --mapping conf/importers/retail_transactions.yaml \
		--input $(RETAIL_DIR)/export.csv
	KAIROS__DATA_DIR=$(RETAIL_DIR) $(RUN) kairos train --task repurchase_90d

clean: ## Remove generated data (var/) and caches
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
