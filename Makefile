# sensorlstm: two commands on a fresh machine with Python 3.11+ and pip.
#   make run   - set up .venv, generate sample data, pre-train if needed, run the retrain flow
#   make test  - set up .venv with dev extras, lint, format check, the whole test suite

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
TORCH  := torch==2.13.0
SAMPLE := data/sample
CONFIG ?= configs/default.yaml
ARGS   ?=

export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= true
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR ?= false

.PHONY: run test install install-dev lint bench clean

$(PY):
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "sensorlstm needs Python 3.11+, found " + sys.version'
	$(PYTHON) -m venv $(VENV)

# torch first: a pinned CPU-or-CUDA build chosen by pip, before anything pulls a newer one.
$(VENV)/.installed: $(PY) pyproject.toml
	@$(PY) -c 'import torch' 2>/dev/null || $(PIP) install $(TORCH)
	$(PIP) install -e .
	@touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -e ".[dev]"
	@touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

$(SAMPLE): | $(VENV)/.installed
	$(VENV)/bin/sensorlstm generate --config $(CONFIG) --out $(SAMPLE)

run: $(VENV)/.installed $(SAMPLE)
	$(VENV)/bin/sensorlstm retrain --config $(CONFIG) $(ARGS)
	@echo ""
	@echo "Where to look:"
	@echo "  MLflow UI:  $(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --port 5000"
	@echo "  Prefect UI: $(VENV)/bin/prefect server start   (then: export PREFECT_API_URL=http://127.0.0.1:4200/api; make run)"
	@echo "  Champion:   mlflow.pyfunc.load_model('models:/sensor-lstm@champion')"

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(VENV)/bin/pytest -q

$(VENV)/.installed-bench: $(VENV)/.installed-dev
	$(PIP) install -e ".[dev,bench]"
	@touch $@

# Quick versions; drop --quick for the full tables in the README.
bench: $(VENV)/.installed-bench
	$(PY) benchmarks/ingest.py --quick
	$(PY) benchmarks/bucketing.py --quick
	$(PY) benchmarks/train.py --quick

clean:
	rm -rf data mlflow.db mlartifacts .pytest_cache .ruff_cache
