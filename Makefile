# Two commands matter: `make run` (set up + quick-start benchmark) and `make test` (set up + tests).
# Also: `make test-fast` (the edit loop), `make docs` (regenerate docs/reference), `make perf`, `make report`,
# `make reproduce` / `make reproduce-quick` (the seed papers' claims on CPU twins, docs/reproduce.md).
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
# GPU users: make setup TORCH_INDEX=https://download.pytorch.org/whl/cu128
TORCH_INDEX ?=
RESULTS ?= results

.PHONY: setup browser run test test-fast conformance docs lint perf report reproduce reproduce-quick mlflow-ui mlflow-server clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	@touch $@

run: setup
	$(BIN)/harness run benchmarks/quickstart.yaml --results $(RESULTS)

# tests/test_browser.py opens the published report in Chromium; install it once (CI runs as root).
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  ($(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium) || \
	  echo "chromium could not be installed: tests/test_browser.py will be skipped"

test: setup browser
	$(BIN)/ruff check harness tests benchmarks
	$(BIN)/python -m pytest -q -m "not conformance"

# The edit loop: the suite without the slow end-to-end, Ray and browser tests (markers in pyproject.toml).
test-fast: setup
	$(BIN)/ruff check harness tests benchmarks
	$(BIN)/python -m pytest -q -m "not slow and not ray and not browser and not conformance"

# Every method x every model family, one tiny cell each (246 tests; 91 s on 2 cores, 2026-12-06).
conformance: setup
	$(BIN)/python -m pytest -q tests/test_conformance.py

# docs/reference/*.md from the registries, the spec models and harness/schema.py; tests/test_docs.py checks them.
docs: setup
	$(BIN)/python -m harness.docs

perf: setup
	@for script in benchmarks/perf_*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

report: setup
	$(BIN)/harness report --results $(RESULTS)

# The seed papers' experiments as CPU twins (benchmarks/papers/cpu/), then `harness claims` on them.
# A run that exits 1 (a failed cell) goes on: the claims say what its rows allow; exit 2 (bad input) stops.
QUICK_TWINS := shrinkbench_digits lottery_mnist1d supermask_digits quantization_digits compression_digits
ALL_TWINS   := $(QUICK_TWINS) lottery_digits renda_digits gradient_flow_digits shrinkbench_mnist1d \
               shrinkbench_bn lottery_bn quantization_bn lmc_mnist1d
define run_twins
	@for twin in $(1); do \
	  echo "== benchmarks/papers/cpu/$$twin.yaml"; \
	  $(BIN)/harness run benchmarks/papers/cpu/$$twin.yaml --results $(RESULTS); \
	  code=$$?; if [ $$code -gt 1 ]; then exit $$code; fi; \
	done
	$(BIN)/harness claims --results $(RESULTS)
endef

reproduce: setup
	$(call run_twins,$(ALL_TWINS))

reproduce-quick: setup
	$(call run_twins,$(QUICK_TWINS))

mlflow-ui: setup
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(RESULTS)/mlflow.db --host 127.0.0.1 --port 5000

# A tracking server for cells on many machines: `harness run` logs to it with MLFLOW_TRACKING_URI=http://HOST:5000.
# Bound to this machine unless told otherwise (MLFLOW_HOST=0.0.0.0 exposes it: put it behind a firewall or a proxy).
# MLFLOW_BACKEND may be any SQL store MLflow supports, e.g. postgresql://user@db/mlflow (with its driver installed).
MLFLOW_HOST    ?= 127.0.0.1
MLFLOW_PORT    ?= 5000
MLFLOW_BACKEND ?= sqlite:///$(abspath $(RESULTS))/mlflow.db
mlflow-server: setup
	@mkdir -p $(RESULTS)
	$(BIN)/mlflow server --backend-store-uri $(MLFLOW_BACKEND) --artifacts-destination $(abspath $(RESULTS))/mlartifacts \
		--host $(MLFLOW_HOST) --port $(MLFLOW_PORT)

clean:
	rm -rf $(VENV) .pytest_cache
