# Two commands do all set-up on a fresh machine:
#   make demo   create the environment, install, run the pipeline on sample_data/
#   make test   same set-up (plus the system packages the tests need), then the tests
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.uptrack-installed
PYTEST_ARGS ?=
TORCH_INDEX ?=

.PHONY: demo test install system-deps clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned to 2.13.0: pip takes the CPU-only build (~0.2 GB) where one is on offer
	# (a local wheel, or TORCH_INDEX=https://download.pytorch.org/whl/cpu), else the package
	# index's default build, which bundles CUDA (~5 GB installed) and runs on a CPU as well
	$(PY) -m pip install --quiet -c constraints.txt $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) torch
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	@$(PY) -c "import torch; print('torch', torch.__version__, '(CPU-only build)' if torch.version.cuda is None else f'(CUDA {torch.version.cuda} build; runs on CPU too)')"
	@du -sh $(VENV) | awk '{print "environment size:", $$1}'
	touch $(STAMP)

install: $(STAMP)

system-deps:
	bash .ci/system-deps.sh

demo: install
	$(VENV)/bin/uptrack run configs/sample.yaml

test: install system-deps
	$(VENV)/bin/ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) results .pytest_cache
