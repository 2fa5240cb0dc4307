# One-command set-up: `make demo` runs the main job, `make test` the tests. Both install first.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
# pip prints one warning per package for this machine's unused local index dirs: hide them.
QUIET := 2>&1 | { grep -v "^WARNING: Location" || true; }

.PHONY: install install-flower test demo ui browser browser-test screenshots

install: $(STAMP)

# torch first and alone: `torch==2.13.0` resolves to the CPU wheel here and to the usual CUDA
# wheel on a GPU machine; then the pinned stack (constrained by the lock), then this project.
$(STAMP): requirements.txt requirements.lock pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24" $(QUIET)
	$(PY) -m pip install -q torch==2.13.0 $(QUIET)
	$(PY) -m pip install -q -r requirements.txt -c requirements.lock $(QUIET)
	$(PY) -m pip install -q --no-deps -e . $(QUIET)
	touch $(STAMP)

# The Flower environment (train.backend: flower): flwr's pins clash with Prefect's and
# MLflow's, so it gets a virtualenv of its own, pinned by requirements-flower.lock.
FLOWER_VENV ?= .venv-flower
FLOWER_PY := $(FLOWER_VENV)/bin/python
FLOWER_STAMP := $(FLOWER_VENV)/.installed

install-flower: $(FLOWER_STAMP)

$(FLOWER_STAMP): requirements-flower.txt requirements-flower.lock pyproject.toml
	test -x $(FLOWER_PY) || python3 -m venv $(FLOWER_VENV)
	$(FLOWER_PY) -m pip install -q --upgrade "pip>=24" $(QUIET)
	$(FLOWER_PY) -m pip install -q torch==2.13.0 $(QUIET)
	$(FLOWER_PY) -m pip install -q -r requirements-flower.txt -c requirements-flower.lock $(QUIET)
	$(FLOWER_PY) -m pip install -q --no-deps -e . $(QUIET)
	touch $(FLOWER_STAMP)

test: install install-flower
	HF_HUB_OFFLINE=1 PATH="$(BIN):$$PATH" $(PY) -m pytest -q

demo: install
	HF_HUB_OFFLINE=1 PATH="$(BIN):$$PATH" scripts/with_prefect_server.sh dvc repro

ui: install
	PATH="$(BIN):$$PATH" dept ui

# Debian's Chromium for the opt-in browser test and the screenshots (nothing else needs it)
browser:
	command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }

browser-test: install browser
	HF_HUB_OFFLINE=1 PATH="$(BIN):$$PATH" $(PY) -m pytest -q tests/test_ui_browser.py

# docs/*.png from this project after `make demo`
screenshots: install browser
	PATH="$(BIN):$$PATH" $(PY) scripts/browser.py --project . --out docs
