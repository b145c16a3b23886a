# Two commands from a fresh clone: `make train` and `make test`. Both install on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test train lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

train: $(STAMP)
	$(BIN)/cnnkit train --config configs/lenet.yaml

lint: $(STAMP)
	$(BIN)/ruff check cnnkit tests scripts

bench: $(STAMP)
	$(BIN)/python scripts/bench_train.py

clean:
	rm -rf $(VENV) .pytest_cache
