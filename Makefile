# Two entry points for a fresh machine: `make demo` (the whole flow on synthetic data) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is installed first and pinned: its CPU wheel is the one this project is tested with, and an
# unpinned requirement would pull a multi-GB CUDA build.
TORCH := torch==2.13.0
# Where the CPU wheel comes from. Empty: pip's own configuration (this project's machines carry the CPU
# wheel locally). Elsewhere use PyTorch's CPU index: make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
TORCH_PIP_ARGS := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX) --extra-index-url https://pypi.org/simple,)
# The serving side of the demo: din_runtime with numpy + onnxruntime only, no torch.
RUNTIME_VENV := .venv-runtime

.PHONY: setup runtime test lint demo demo-model web clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PIP_ARGS) $(TORCH)
	$(BIN)/python -m pip install -q -e '.[train,cpu,dev,bench,spark]'
	touch $@

runtime: $(RUNTIME_VENV)/.installed

$(RUNTIME_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(RUNTIME_VENV)
	$(RUNTIME_VENV)/bin/python -m pip install -q --upgrade pip
	$(RUNTIME_VENV)/bin/python -m pip install -q -e '.[cpu]'
	touch $@

demo: setup runtime
	scripts/demo.sh

# Rebuild the shipped models/demo and examples/requests.jsonl (models/demo/MODEL_CARD.md says how).
demo-model: setup
	scripts/build_demo_model.sh

# -rs: say why a test was skipped (e.g. the Node.js and browser tests without node or chromium)
test: setup
	$(BIN)/python -m pytest -q -rs

# The web page (examples/web): install onnxruntime-web, then serve the repository root as static files.
web: examples/web/node_modules/.package-lock.json
	@echo "open http://127.0.0.1:8000/examples/web/ (Ctrl-C stops the server)"
	$(PYTHON) -m http.server -b 127.0.0.1 8000

examples/web/node_modules/.package-lock.json: examples/web/package-lock.json
	cd examples/web && npm ci --ignore-scripts --no-audit --no-fund

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(RUNTIME_VENV) out
