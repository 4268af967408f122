"""Capacity planning's scenario fields: load.users / load.rate lists as a sweep axis, [slo] and
[search]; the plan they make; every bad input is one line naming the field, exit status 2, and
nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from clusterlab.lab.config.plan import build_plan, point_load
from clusterlab.lab.config.scenario import ScenarioError, load_scenario, parse_scenario

pytestmark = pytest.mark.parallel_ok  # starts no load: runs beside the cluster tests

BASE = """
[target]
kind = "builtin"
[sweep]
workers = [1, 2]
[workloads]
cpu = { "/cpu?ms=2" = 1 }
[load]
users = 4
duration = 3
"""
OPEN = BASE.replace("users = 4", 'users = 4\nmodel = "open"\nrate = [100, 200, 400]')
SEARCH = BASE + "[slo]\np99_ms = 50\nrate = 300\n[search]\nstart = 25\n"

BAD = [
    (BASE.replace("users = 4", "users = []"), "load.users: expected an integer from 1 to 10000"),
    (OPEN.replace("rate = [100, 200, 400]", "rate = []"), "load.rate: expected a positive"),
    (OPEN.replace("[100, 200, 400]", "[100, 100]"), "load.rate: expected a positive"),
    (
        OPEN.replace("users = 4", "users = [4, 8]"),
        "load.users: expected a single value when load.rate is a list",
    ),
    (BASE + "[slo]\np98_ms = 5\n", "slo.p98_ms: expected one of the fields p50_ms"),
    (BASE + "[slo]\n", "slo: expected a table of bounds like p99_ms = 50, got an empty table"),
    (BASE + "[slo]\nrate = 100\n", "slo: expected at least one bound"),
    (BASE + '[slo]\np99_ms = "> 5"\n', 'slo.p99_ms: expected an upper bound ("< x" or "<= x")'),
    (BASE + '[slo]\np99_ms = "fast"\n', 'slo.p99_ms: expected a condition like "< 50"'),
    (BASE + "[search]\n", "slo: expected a table of bounds (e.g. p99_ms = 50) to search against"),
    (
        SEARCH.replace("users = 4", 'users = 4\nmodel = "open"\nrate = 100'),
        "load.rate: expected no rate (the search picks the rates)",
    ),
    (SEARCH.replace("users = 4", "users = [4, 8]"), "load.users: expected a single value"),
    (SEARCH.replace("users = 4", 'users = 4\nengine = "wrk"'), 'load.engine: expected "locust"'),
    (SEARCH.replace("start = 25", "start = 0"), "search.start: expected a positive number"),
    (SEARCH.replace("start = 25", "precision = 2"), "search.precision: expected a ratio"),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[m[:40] for _, m in BAD])
def test_each_bad_capacity_field_is_one_line_naming_it(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    line = str(caught.value)
    assert line.startswith(f"{path}: ") and message in line, line
    assert "\n" not in line


@pytest.mark.parametrize("case", [0, 9])
def test_clusterlab_run_refuses_them_with_exit_2_and_writes_nothing(tmp_path, case):
    text, message = BAD[case]
    path = tmp_path / "bad.toml"
    path.write_text(text)
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "clusterlab.cli", "run", str(path), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml"]


def test_a_list_of_users_is_a_load_level_per_value_on_one_target_per_worker_count():
    scenario = parse_scenario(_toml(BASE.replace("users = 4", "users = [2, 8, 32]")), "x.toml")
    assert scenario.load.users_levels == (2, 8, 32) and scenario.load.sweeps
    points = build_plan(scenario, parallelism=2)
    assert [(p.workers, p.users, p.rate) for p in points] == [
        (1, 2, None),
        (1, 8, None),
        (1, 32, None),
        (2, 2, None),
        (2, 8, None),
        (2, 32, None),
    ]
    assert len({p.target_key for p in points}) == 2
    assert point_load(scenario, points[2]).users == 32
    assert "32 users" in points[2].label()


def test_a_list_of_rates_is_open_model_levels_with_users_for_the_slos_latency():
    scenario = parse_scenario(_toml(OPEN + "[slo]\np99_ms = 100\n"), "x.toml")
    points = build_plan(scenario, parallelism=2)
    assert [p.rate for p in points[:3]] == [100.0, 200.0, 400.0]
    # rate × 2 × 100 ms in flight, at least the scenario's 4 users
    assert [p.users for p in points[:3]] == [20, 40, 80]
    load = point_load(scenario, points[2])
    assert (load.model, load.rate, load.users) == ("open", 400.0, 80)


def test_a_single_load_keeps_the_scenarios_users_and_rate():
    scenario = parse_scenario(_toml(BASE), "x.toml")
    points = build_plan(scenario, parallelism=2)
    assert not scenario.load.sweeps
    assert {(p.users, p.rate) for p in points} == {(0, None)}
    assert point_load(scenario, points[0]) == scenario.load


def test_search_mode_reads_its_settings_and_the_slo_and_stores_them_in_meta():
    scenario = parse_scenario(_toml(SEARCH), "x.toml")
    assert scenario.search is not None and scenario.search.start == 25
    assert scenario.search.precision == 0.05 and scenario.search.confirm
    assert scenario.slo is not None and scenario.slo.rate == 300
    assert scenario.slo.met({"p99_ms": 50.0}) and not scenario.slo.met({"p99_ms": 50.1})
    assert scenario.slo.describe() == "p99 ≤ 50 ms"
    stored = scenario.to_dict()
    assert stored["slo"] == {"p99_ms": 50, "rate": 300}
    assert stored["search"]["start"] == 25
    # the probes are locust's open model: wrk is refused, auto takes locust
    from clusterlab.lab.config.scenario import wrk_refusal

    assert wrk_refusal(scenario) is not None


def _toml(text: str) -> dict:
    import tomllib

    return tomllib.loads(text)


def test_the_bundled_capacity_scenario_is_a_search_with_an_slo():
    path = Path(__file__).resolve().parents[2] / "scenarios" / "capacity.toml"
    scenario = load_scenario(path)
    assert scenario.search is not None and scenario.slo is not None
    assert all("/cpu" in p for w in scenario.workloads for p, _ in w.requests)
