"""Capacity planning end to end through the CLI, real cluster and real locust: a search run
(probes on a ramp, each a row and a load level, the recommendation printed and at the top of
the report) and ``clusterlab plan`` on what it recorded (its answer, its exit statuses, and
nothing written). Every process the run starts is gone after it."""

from __future__ import annotations

import json
import subprocess
import sys

import jsonschema
import pandas as pd
import psutil
import pytest

from clusterlab.lab.analysis.summary import schema as summary_schema

SEARCH = """
name = "search"
[target]
kind = "builtin"
[sweep]
workers = [1]
[workloads]
cpu = { "/cpu?ms=2" = 1 }
[load]
users = 2
# locust starts users at load.users per second: the second one at 0.5 s, so a warm-up under that
# would measure the ramp (80 req/s asked, 70 sent in the window: a miss by the 90 % rule)
warmup = 1
duration = 0.5
[slo]
p99_ms = 1000
rate = 10
[search]
start = 40
max_probes = 3
min_requests = 40
"""


def clusterlab(*args: object, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clusterlab.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=150,
        **kw,  # type: ignore[call-overload]
    )


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


@pytest.fixture(scope="module")
def search_run(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("search")
    (folder / "s.toml").write_text(SEARCH)
    before = _children()
    done = clusterlab("run", folder / "s.toml", "--out", folder / "run", "-q")
    assert _children() <= before
    return done, folder / "run"


def test_a_search_run_probes_on_a_ramp_and_confirms_its_answer(search_run):
    done, run = search_run
    assert done.returncode == 0, done.stderr
    results = pd.read_csv(run / "results.csv")
    # 40 and 80 req/s both meet a 1 s p99; the last probe is kept for the confirmation
    assert results["search_step"].tolist() == ["ramp", "ramp", "confirm"]
    assert results["offered_rps"].tolist() == [40.0, 80.0, 80.0]
    assert results["point"].tolist() == [0, 1, 2]
    summary = json.loads((run / "summary.json").read_text())
    jsonschema.validate(summary, summary_schema())
    capacity = summary["capacity"]
    assert capacity["slo"] == ["p99_ms <= 1000"]
    [row] = capacity["max_within_slo"]
    assert (row["met"], row["missed"], row["confirmed"]) == (80.0, None, True)
    assert not row["systems"]  # nothing missed above it: a lower bound
    advice = capacity["recommendation"]
    assert advice["workers"] == 1 and advice["lower_bound"]
    assert advice["text"] in done.stdout
    report = (run / "report.md").read_text()
    assert report.index("## Recommendation") < report.index("## Summary")
    assert "## Capacity" in report
    # the probes are load levels: one group each, named after it, and the hockey stick
    assert [p["workload"] for p in summary["points"]] == [
        "cpu @ 40 req/s",
        "cpu @ 80 req/s",
        "cpu @ 80 req/s (confirm)",
    ]
    assert [p["load"]["users"] for p in summary["points"]] == [80, 160, 160]
    assert "hockey.png" in summary["plots"].values()


def test_plan_answers_from_a_recorded_run(search_run):
    _, run = search_run
    done = clusterlab("plan", run, "--rate", 15, "--p99", "1s")
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0]
    assert first.startswith("How many workers for 15 req/s at p99 ≤ 1000 ms? For 15 req/s")
    assert ": 1 worker (rr)" in first
    # the run's own [slo] when no bound is given
    assert clusterlab("plan", run, "--rate", 15).returncode == 0
    nothing = clusterlab("plan", run, "--rate", 1_000_000, "--p99", "50ms")
    assert nothing.returncode == 1
    assert "No measured configuration sustained 1,000,000 req/s" in nothing.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--p99", "fast"], "--p99: expected a latency like 50ms"),
        (["--p99", "0"], "--p99: expected a latency like 50ms"),
        (["--failure-ratio", "200%"], "--failure-ratio: expected a ratio"),
        (["--rate", "-5", "--p99", "5ms"], "--rate: expected a positive number"),
    ],
)
def test_plan_refuses_bad_input_with_one_line_and_exit_2(search_run, args, message):
    _, run = search_run
    before = sorted(p.name for p in run.iterdir())
    done = clusterlab("plan", run, *args)
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert done.stdout == ""
    assert sorted(p.name for p in run.iterdir()) == before


def test_plan_refuses_a_folder_that_is_not_a_run_and_a_run_without_bounds(tmp_path, search_run):
    done = clusterlab("plan", tmp_path, "--p99", "5ms")
    assert done.returncode == 2 and "RUN: expected a run directory" in done.stderr
    meta = json.loads((search_run[1] / "meta.json").read_text())
    meta["scenario"]["slo"] = None
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "meta.json").write_text(json.dumps(meta))
    done = clusterlab("plan", bare, "--rate", 5)
    assert done.returncode == 2 and "--p99: expected a bound" in done.stderr
    assert sorted(p.name for p in bare.iterdir()) == ["meta.json"]
