# `make` sets everything up and runs the pipeline; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)

.PHONY: all setup dev browser database repro test check lint bench lock clean

all: repro

# The pipeline's runtime (requirements/runtime.txt); `dev` adds the tests' and lint's tools.
setup: $(VENV)/.installed
dev: $(VENV)/.dev-installed

$(VENV)/.installed: requirements/runtime.txt pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11+ is required")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements/runtime.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

$(VENV)/.dev-installed: requirements/dev.txt $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -r requirements/dev.txt
	touch $@

repro: setup
	$(BIN)/dvc repro

# The report's browser test uses Debian's chromium (no browser downloads); installed where apt-get
# can run as root, otherwise that one test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium \
	       >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	       apt-get install -y -qq --no-install-recommends chromium >/dev/null; }; }; } \
	  || echo "chromium could not be installed: the browser test will be skipped"

# The sweep test's PostgreSQL (Debian's package; the test starts its own server on 127.0.0.1 and
# stops it): installed where apt-get can run as root, otherwise that one test skips and says why.
database:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] \
	  && command -v apt-get >/dev/null && { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	       --no-install-recommends postgresql >/dev/null 2>&1 || { apt-get update -qq \
	       && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	       postgresql >/dev/null; }; }; } \
	  || echo "PostgreSQL could not be installed: the sweep's database test will be skipped"

test: lint browser database $(VENV)/.bench-installed
	$(BIN)/python -m pytest

bench: setup $(VENV)/.bench-installed
	$(BIN)/python -m benchmarks.run

$(VENV)/.bench-installed: requirements/bench.txt $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -r requirements/bench.txt
	touch $@

# The edit loop: lint, types and the fast tests (2-3 minutes on 2 cores); `make test` runs all.
check: lint
	$(BIN)/python -m pytest -m "not e2e and not slow"

lint: dev
	$(BIN)/ruff check .
	$(BIN)/mypy

# The locks, generated from pyproject.toml's short lists by pip-tools: runtime, runtime + dev tools,
# runtime + the benchmark's peers. Pins already in a lock are kept unless a list needs otherwise
# (delete a lock, or pass PIP_COMPILE=--upgrade, to move to newer versions). pip-tools runs in a
# venv of its own, so `make lock` works whatever state the locks are in. torch's local label
# (+cpu: the CPU wheel this machine offers) is dropped so the pin also resolves on PyPI.
LOCK_VENV := .venv-lock
PIP_COMPILE ?=
LOCK = $(LOCK_VENV)/bin/pip-compile --quiet --strip-extras --allow-unsafe --no-emit-index-url \
  --no-emit-find-links $(PIP_COMPILE)
$(LOCK_VENV)/bin/pip-compile:
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet pip-tools==7.6.2
lock: $(LOCK_VENV)/bin/pip-compile
	$(LOCK) --output-file requirements/runtime.txt pyproject.toml
	$(LOCK) --extra dev --output-file requirements/dev.txt pyproject.toml
	$(LOCK) --extra bench --output-file requirements/bench.txt pyproject.toml
	sed -i 's/^\(torch==[^+ ]*\)+[a-z0-9.]*/\1/' requirements/*.txt

# Everything the pipeline and the set-up made that git does not track (reports/live is in git).
clean:
	rm -rf $(VENV) $(LOCK_VENV) data/raw data/downloads data/prepared data/resume data/sweeps models \
	  reports/evaluation reports/tensorboard reports/tensorboard-runs \
	  reports/timing reports/index.html reports/run.js dvc_plots
