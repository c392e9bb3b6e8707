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

# Fashion-MNIST for `paperclub bounds` (Debian's dataset-fashion-mnist; its tests skip without it)
FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
$(FASHION):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) || \
		echo "could not install dataset-fashion-mnist: paperclub bounds classify will say so"; \
	else echo "paperclub bounds needs Fashion-MNIST: sudo apt-get install dataset-fashion-mnist"; fi

setup: $(BIN)/paperclub $(FASHION)

demo: setup
	$(BIN)/paperclub demo

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider
	$(BIN)/ruff check src tests benchmarks

lint: setup
	$(BIN)/ruff check src tests benchmarks
