# Everything runs from a virtualenv that these targets create: only python3 is needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint format bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[all,dev]'
	touch $(STAMP)

install: $(STAMP)

## The main job on embedded defaults: workers, a batch of messages, the audit summary.
demo: install
	$(BIN)/tradeflow demo

## The test suite against the real Redis and PostgreSQL of this machine.
## Three pytest-xdist workers (most tests wait on worker processes, not the CPU): ~15 min, not ~25.
## A failed test is run once more; a rerun shows as "R" and by name in the summary (-rfER), so flakes stay visible.
test: install
	$(BIN)/ruff check .
	$(BIN)/pytest -n 3 --reruns 1 --reruns-delay 2 --durations=20 -rfER

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/python bench/throughput.py
