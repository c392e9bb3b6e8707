# Two entry points (see README): `make demo` and `make test`. Both create .venv if needed.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint

$(BIN)/paperclub: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(BIN)/paperclub

setup: $(BIN)/paperclub

demo: setup
	$(BIN)/paperclub demo

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider
	$(BIN)/ruff check src tests benchmarks

lint: setup
	$(BIN)/ruff check src tests benchmarks
