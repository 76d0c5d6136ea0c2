# make demo / make test set themselves up on a fresh machine: a .venv, torch 2.13.0 first (the CPU
# build on local disk; a bare torch would fetch a CUDA build), then the project and its dev tools.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
# Oversubscribed OpenMP threads spin badly on 2 cores (the tests start servers beside the
# model); one process alone (the demo) runs about a quarter faster with them spinning.
PASSIVE := OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE}

.PHONY: install demo test bench results clean

$(STAMP):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e ".[services,dev]"
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/unigap demo

test: install
	$(PASSIVE) $(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Benchmarks against baselines measured in the same run: a table and bench/results.json (about
# 2.5 minutes on 2 cores). bench/gpu.py needs CUDA; here it checks its setup on a tiny CPU model.
bench: install
	$(PASSIVE) $(PY) bench/gpu.py --dry-run
	$(PASSIVE) $(PY) -m bench

# docs/results.md from results/<recipe>/s<seed>.json (seconds; nothing is run, the runs' JSONs are read)
results: install
	$(PY) -m unigap.results_doc

clean:
	rm -rf $(VENV) reports .pytest_cache
