# One target per habit: install, test, lint, lab, bench.
# Debian's interpreter when there is one: it lives outside /root, so tests can run workers as
# another user (settings uid/gid); otherwise whatever python3.11 is on PATH.
PYTHON ?= $(shell test -x /usr/bin/python3.11 && echo /usr/bin/python3.11 || echo python3.11)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test lint lab bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH"; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check clusterlab tests examples
	$(VENV)/bin/mypy

lab: install
	$(VENV)/bin/clusterlab run scenarios/quick.toml

clean:
	rm -rf $(VENV) build *.egg-info
