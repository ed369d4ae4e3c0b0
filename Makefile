# All set-up happens here: `make demo` and `make test` work on a fresh machine with only Python 3.11.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint typecheck bench-profile clean

$(STAMP): pyproject.toml Makefile
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (set PYTHON=...)" >&2; exit 2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: the CPU wheel on this disk; an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install --disable-pip-version-check -q torch==2.13.0
	$(BIN)/pip install --disable-pip-version-check -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/coinfer search

test: install
	$(BIN)/python -m pytest -q -n 2 tests

lint: install
	$(BIN)/ruff check coinference envs search storage tests bench
	$(BIN)/ruff format --check coinference envs search storage tests bench

typecheck: install
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info
