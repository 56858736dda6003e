# Two entry points for a fresh machine with only Python: `make quickstart` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install test test-slow quickstart lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# The package alone (the quickstart needs nothing more); the test extras and Ray/submitit on top for `make test`.
$(VENV)/.installed-base: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[dev,cluster]"
	touch $@ $(VENV)/.installed-base

install: $(VENV)/.installed

# worksteal: a worker that runs out of tests takes the other's pending ones, so one long test late in the
# collection order does not leave a worker idle at the end.
test: install
	$(BIN)/python -m pytest -n 2 --dist worksteal --durations=15

test-slow: install
	$(BIN)/python -m pytest -n 2 -m slow

# The main job: the quickstart ladder (3 mixers x 3 sizes x 3 FLOP budgets + state sizes, seeds and a held-out
# budget) on the embedded corpus, then its fitted laws, held-out predictions, figures and report.
# Rerunning resumes: finished runs are skipped.
quickstart: $(VENV)/.installed-base
	$(BIN)/scaling sweep experiments/quickstart.py --sweep-dir sweeps/quickstart
	$(BIN)/scaling analyze sweeps/quickstart --holdout

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) *.egg-info
