# Two entry points for a fresh machine: `make demo` (the whole flow on synthetic data) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is installed first and pinned: its CPU wheel is the one this project is tested with, and an
# unpinned requirement would pull a multi-GB CUDA build.
TORCH := torch==2.13.0

.PHONY: setup test lint demo clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[train,cpu,dev,bench]'
	touch $@

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) out
