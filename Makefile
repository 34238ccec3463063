# synthloop — `make run` runs the whole loop on the embedded default; `make test` runs the tests.
# Both create .venv on a fresh machine first.
#
# GPU users: pick your own torch, e.g.
#   make venv TORCH_SPEC="torch==2.5.1 torchvision==0.20.1" PIP_TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu124"
PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0 torchvision==0.28.0
PIP_TORCH_INDEX ?=
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.synthloop-installed
PYTEST_ARGS ?=
# Test processes (pytest-xdist): most of the suite's time is end-to-end loops whose stages spend it importing
# torch, MLflow and great-expectations on one core; two workers keep both cores busy. TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
PYTEST_XDIST := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadgroup)

export DVC_NO_ANALYTICS=1
export MLFLOW_DISABLE_TELEMETRY=true
export DO_NOT_TRACK=1
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export GX_ANALYTICS_ENABLED=false
export HF_HUB_OFFLINE ?= 1
# Prefect keeps its run history with the project, so `make ui` / `prefect flow-run ls` find the runs.
export PREFECT_HOME ?= $(CURDIR)/.prefect
# Prefect's in-process API server gets 20 s to start by default: too little on a busy 2-core machine.
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: run test test-fast venv lock deps review ui benchmark clean-data

run: $(STAMP)
	$(PY) -m flows.cli run

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_XDIST) $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest $(PYTEST_XDIST) -m "not slow" $(PYTEST_ARGS)

venv: $(STAMP)

# Torch first, from TORCH_SPEC (the CPU 2.13.0 wheel by default), so nothing later resolves a CUDA torch;
# then the project with every other version pinned by requirements.lock.
$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(PIP_TORCH_INDEX) $(TORCH_SPEC)
	$(PY) -m pip install -q -c requirements.lock -e ".[dev]"
	touch $(STAMP)

lock: $(STAMP)
	{ echo "# Repeatable installs: used as pip constraints (-c) by the Makefile. torch/torchvision come from TORCH_SPEC."; \
	  echo "# Regenerate with \`make lock\` after changing dependencies."; \
	  $(PY) -m pip freeze --exclude-editable | grep -v -i -E '^(torch|torchvision|synthloop)[=@ ]'; } > requirements.lock

# dvc.yaml's code deps from the import graph (tests/test_dag.py fails when they disagree).
deps: $(STAMP)
	$(PY) -m tasks.codedeps --write

review: $(STAMP)
	$(PY) -m flows.cli review

ui: $(STAMP)
	$(PY) -m flows.cli ui

benchmark: $(STAMP)
	$(PY) -m benchmarks.run
