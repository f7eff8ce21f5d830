# `make lab` and `make test` each set up .venv first when it is missing or stale.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.vitkit-installed
PYTEST_ARGS ?=

.PHONY: lab test bench calibrate env clean

env: $(STAMP)

$(STAMP): pyproject.toml scripts/install_torch.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	sh scripts/install_torch.sh $(PY)
	$(PY) -m pip install -e ".[dev,notebooks]"
	touch $(STAMP)

# Jupyter refuses to run as root unless told; containers often are root.
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root)

lab: $(STAMP)
	$(PY) -m jupyter lab $(ROOT_FLAG) notebooks/

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m vitkit.bench $(BENCH_ARGS)

# the attached GPU's cost models, their TTFT validation and a summary, into results/<card>/
calibrate: $(STAMP)
	$(PY) -m vitkit.bench calibrate $(CALIBRATE_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis test-artifacts
