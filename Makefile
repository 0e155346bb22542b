# kernelight: the two Quickstart commands.
#   make demo   sets up (.venv, pinned packages, system libraries) then trains and renders the demo scene
#   make test   sets up, then runs the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# TORCH=cpu (default) keeps the CPU build of torch that constraints.txt pins; on a machine with an
# NVIDIA GPU, TORCH=cu128 (or cu126, ... any tag of download.pytorch.org/whl) installs the CUDA build
# of the same version first (README "GPU install"): make setup TORCH=cu128
TORCH ?= cpu
STAMP := $(VENV)/.kernelight-installed$(if $(filter cpu,$(TORCH)),,-$(TORCH))
PYTEST_ARGS ?=

.PHONY: setup sysdeps browser demo test bench clean

sysdeps:
	@bash tools/install_sysdeps.sh

browser:
	@bash tools/install_sysdeps.sh --browser

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if [ "$(TORCH)" != "cpu" ]; then \
	  echo "installing torch $$(sed -n 's/^torch==//p' constraints.txt) built for $(TORCH)"; \
	  $(PY) -m pip install -q "torch==$$(sed -n 's/^torch==//p' constraints.txt)" \
	    --index-url https://download.pytorch.org/whl/$(TORCH); fi
	$(PY) -m pip install -q -c constraints.txt -e ".[test]"
	@touch $(STAMP)

setup: sysdeps $(STAMP)

demo: setup
	$(PY) tools/demo.py

test: setup browser
	$(PY) -m pytest $(PYTEST_ARGS)

bench: setup
	$(PY) -m pip install -q -c constraints.txt -e ".[test,bench]"
	$(PY) tools/bench_bvh.py

clean:
	rm -rf $(VENV) outputs .pytest_cache
