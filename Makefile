# chainbill: one command for the main job, one for the tests. Both install what they need.
SHELL := /bin/bash
export PATH := $(CURDIR)/.venv/bin:$(PATH)
PY_SOURCES := api offchain scripts bench tests

.PHONY: setup run test lint typecheck slither invariants bench-gas bench-indexer bench-api bench-keeper abi clean

setup:  ## install npm + Python packages, the solc shim and Anvil; compile
	@bash tools/setup.sh

run: setup  ## local Anvil on :8545, deploy chainbill, print the manifest
	@bash tools/run.sh

test: setup slither lint typecheck  ## everything CI runs
	ape test tests -q

lint:
	ruff check $(PY_SOURCES)
	ruff format --check $(PY_SOURCES)

typecheck:
	mypy api offchain bench tools scripts tests

slither:  ## Slither over contracts/; fails on untriaged High/Medium findings -> .cache/slither.json
	@bash tools/slither.sh

invariants: setup  ## a long invariant campaign (2,000 examples x 60 steps per deployment)
	CHAINBILL_INVARIANT_EXAMPLES=2000 CHAINBILL_INVARIANT_STEPS=60 ape test tests/contracts/test_invariants.py -q

bench-gas: setup  ## gas of every operation vs a bare transferFrom -> bench/results/gas.json
	python bench/gas.py

clean:
	rm -rf .build .cache .venv node_modules

bench-indexer: setup  ## indexer throughput vs raw eth_getLogs, memory, live lag -> bench/results/indexer.json
	python bench/indexer.py

bench-api: setup  ## gateway lookup/list latency over 1M invoices vs /ping, SQLite + PostgreSQL -> bench/results/api.json
	python bench/api.py

bench-keeper: setup  ## the keeper charging 5,000 due subscriptions vs one charge tx each -> bench/results/keeper.json
	python bench/keeper.py

abi: setup  ## re-export offchain/abi/*.json from the compiled contracts
	python tools/export_abi.py
