# Two entry points for a fresh machine with only Python: `make quickstart` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install test test-slow quickstart lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

test: install
	$(BIN)/python -m pytest -n 2

test-slow: install
	$(BIN)/python -m pytest -n 2 -m slow

# The main job (until sweeps land): train the tiny power-retention model on the embedded corpus.
quickstart: install
	$(BIN)/scaling train configs/models/power_retention_tiny.py --workdir runs/quickstart

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) *.egg-info
