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

# Peer benchmarks (hand-off and keep-alive vs Node.js and uvicorn); BENCH_ARGS=--quick for a short run.
CL_TARGET := {python} bench/clusterlab_hello.py --workers {workers} --port {port} --policy
bench: install
	@command -v wrk >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wrk; }
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m bench.handoff --peers node-rr,node-none,uvicorn,gunicorn-sync,gunicorn-gthread \
		--modes close,keepalive --wait-quiet 15 --ready-text ' listening on ' \
		--target 'clusterlab-rr=$(CL_TARGET) rr' --target 'clusterlab-none=$(CL_TARGET) none' \
		--target 'clusterlab-reuseport=$(CL_TARGET) reuseport' $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
