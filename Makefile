# kernelight: the two Quickstart commands.
#   make demo   sets up (.venv, pinned packages, system libraries) then trains and renders the demo scene
#   make test   sets up, then runs the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kernelight-installed
PYTEST_ARGS ?=

.PHONY: setup sysdeps browser demo test bench clean

sysdeps:
	@bash tools/install_sysdeps.sh

browser:
	@bash tools/install_sysdeps.sh --browser

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
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
