# The two commands a newcomer runs: `make run` and `make test`. Both build .venv from nothing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test lint pytest bench clean

$(STAMP): pyproject.toml
	@echo "==> building $(VENV) (llama-cpp-python compiles from source the first time: about 6 minutes on 2 cores)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

run: $(STAMP)
	@PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash tools/demo.sh

test: lint pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check anticloud ledger tools tests
	$(VENV)/bin/mypy

pytest: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) tools/bench/ledger_bench.py

clean:
	rm -rf $(VENV) .anticloud .pytest_cache .mypy_cache .ruff_cache
