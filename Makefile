# One target per habit: install, test, lint, lab, bench.
# Debian's interpreter when there is one: it lives outside /root, so tests can run workers as
# another user (settings uid/gid); otherwise whatever python3.11 is on PATH.
PYTHON ?= $(shell test -x /usr/bin/python3.11 && echo /usr/bin/python3.11 || echo python3.11)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test lint lab bench stress trust trust-compare history-check mutate clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH"; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# The lab's native load engine (Debian's wrk); without it the lab falls back to locust and says so.
wrk:
	@command -v wrk >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wrk; } \
		|| echo "wrk could not be installed: the lab will load with locust only"

# The suite in two parts, both always run. Tests that only wait on their own processes (the
# cluster under both start methods, the supervisor, reliability, the bench's units, and lab tests
# marked parallel_ok: they start no load) run 3 at a time (xdist); the rest, the lab's runs above
# all (their trust checks read the whole machine's CPU, and a busy machine is a verdict there),
# run alone after them. tests/conftest.py marks which (PARALLEL_FOLDERS); a new test runs alone.
test: install wrk
	@rc=0; \
	$(PY) -m pytest -q -n 3 -m "not alone" tests || rc=$$?; \
	$(PY) -m pytest -q -m alone tests || rc=$$?; \
	exit $$rc

# ruff (lint and format), mypy, and no function outside the tests over 60 lines.
LINTED := clusterlab tests examples bench tools
lint: install
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)
	$(VENV)/bin/mypy
	$(PY) tools/check_function_length.py --max 60 clusterlab bench examples tools

lab: install wrk
	$(VENV)/bin/clusterlab run scenarios/quick.toml

# Every row of docs/targets.md's performance table beside its peer (bench/suite.py), under 10 minutes on
# 2 cores (5 of them the primary's RSS run; each row's seconds are printed and kept, see
# docs/benchmarks.md); BENCH_ARGS=--quick for ~3 minutes, BENCH_ARGS='--only scaling,primary' for some rows.
bench: install wrk
	@$(PY) -c 'import gunicorn' 2>/dev/null || $(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m bench.suite --wait-quiet 10 $(BENCH_ARGS)

# The lab beside wrk on Node.js's cluster and the builtin target: every point's lab/wrk ratio,
# verdict and target CPU; fails when a verdict contradicts wrk (bench/trust.py, ~5 minutes).
trust: install wrk
	$(PY) -m bench.trust $(TRUST_ARGS)

# The reliability suite's long versions (60 s crash storms, 50k hand-offs, ...), under 10 minutes;
# ends with a table: each reliability target and the figure measured for it.
stress: install
	CLUSTERLAB_STRESS=1 $(PY) -m pytest -q tests/reliability

# Can `clusterlab compare` be trusted here? Calibrates a short ci-like scenario, then 5 A/A runs,
# 5 at +30 % and 5 at +10 % CPU per request and one beside a CPU burner, each compared with the
# quiet baseline; prints the table and exits 1 when a target is missed. About 25 minutes on
# 2 cores; TRUST_COMPARE_ARGS=--quick for about 4 (the plumbing, not the counts).
trust-compare: install
	$(PY) tools/trust_compare.py $(TRUST_COMPARE_ARGS)

# Does `clusterlab history check` find a real +15 % step where it is and nothing in an A/A history?
# 16 real runs of /cpu?ms=2 then 8 of /cpu?ms=2.3 into one history (tools/history_check.py);
# about 4 minutes on 2 cores.
history-check: install wrk
	$(PY) tools/history_check.py $(HISTORY_CHECK_ARGS)

# Plant named bugs one at a time (each in a fresh copy of the tree) and check that the tests
# catch every one; prints which test caught which bug (tools/mutate.py), ~5 minutes on 2 cores.
mutate: install
	$(PY) tools/mutate.py $(MUTATE_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
