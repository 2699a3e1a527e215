# The two commands a new user needs: `make repro` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install lint test test-slow repro repro-parallel clean-venv

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

repro: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

# The study with JOBS workers through DVC's queue, then `dvc repro` from the run-cache
# (silr parallel; see the README's "Parallel and distributed runs").
JOBS ?= 2
repro-parallel: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/silr parallel --jobs $(JOBS)

clean-venv:
	rm -rf $(VENV)
