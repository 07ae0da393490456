# Two commands do all set-up on a fresh machine:
#   make demo   create the environment, install, run the pipeline on sample_data/
#   make test   same set-up (plus the system packages the tests need), then the tests
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.uptrack-installed
PYTEST_ARGS ?=

.PHONY: demo test install system-deps clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: the CPU build (any other torch pulls GBs of CUDA packages)
	$(PY) -m pip install --quiet -c constraints.txt torch
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

system-deps:
	bash .ci/system-deps.sh

demo: install
	$(VENV)/bin/uptrack run configs/sample.yaml

test: install system-deps
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) results .pytest_cache
