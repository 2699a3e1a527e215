# The two commands a new user needs: `make repro` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install lint test test-slow repro repro-parallel repro-serial clean-venv

install: $(STAMP)

# Re-installs only when the requirements or the package metadata change.
$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.txt
	$(BIN)/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The linter (ruff, pinned in requirements.txt, configured in pyproject.toml) runs first.
lint: install
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

# The default pipeline: the study with JOBS workers through DVC's queue, then `dvc repro`
# restoring every train and evaluate stage from the run-cache (silr parallel; the README's
# "Parallel and distributed runs"). On the 2-core build machine 2 workers x 1 thread took
# 18 min 28 s against 21 min 43 s for one `dvc repro` with 2 threads (2026-11-29, a smaller
# study); the whole default study now takes about 66 min on it (benchmarks/results/make-repro-tail.txt).
JOBS ?= 2
repro: repro-parallel

repro-parallel: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/silr parallel --jobs $(JOBS)

# One plain `dvc repro` (all threads to each training in turn).
repro-serial: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

clean-venv:
	rm -rf $(VENV)
