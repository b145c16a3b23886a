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

# The data beside the checkout on this project's machines, unless CNNKIT_DATA names some; elsewhere cnnkit
# decides (CNNKIT_DATA, data.root, or ./data, downloaded there on first use).
SHARED_DATA := $(wildcard ../shared/data/cifar10)
DATA_FLAG := $(if $(CNNKIT_DATA),,$(if $(SHARED_DATA),--data-root $(SHARED_DATA)))

train: $(STAMP)
	$(BIN)/cnnkit train --config configs/lenet.yaml $(DATA_FLAG)

lint: $(STAMP)
	$(BIN)/ruff check cnnkit tests scripts

bench: $(STAMP)
	$(BIN)/python scripts/bench_train.py

clean:
	rm -rf $(VENV) .pytest_cache
