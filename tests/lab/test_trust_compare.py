"""tools/trust_compare.py's own logic, without load: the scenario it writes is valid, a
compare's JSON becomes a table row (with why it was not unchanged), disturbed runs are told
apart, and the targets are counted as the issue states them."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from compare_fixtures import edit_points, summary

from clusterlab.lab.ci import outputs
from clusterlab.lab.ci.compare import compare
from clusterlab.lab.config.scenario import load_scenario

pytestmark = pytest.mark.parallel_ok  # starts no load: runs beside the cluster tests

TOOL = Path(__file__).parents[2] / "tools" / "trust_compare.py"
spec = importlib.util.spec_from_file_location("trust_compare", TOOL)
trust = importlib.util.module_from_spec(spec)
sys.modules["trust_compare"] = trust  # dataclasses look their module up
spec.loader.exec_module(trust)

BASE = {("cpu", "rr", 1): [450, 455, 445, 452, 448, 451, 449, 447]}
SLOW = {("cpu", "rr", 1): [v / 1.3 for v in BASE[("cpu", "rr", 1)]]}


def compare_json(current):
    return json.loads(outputs.to_json(compare(summary(BASE), current)))["compare"]


def test_the_scenarios_it_writes_are_valid(tmp_path):
    settings = trust.Settings(tmp_path, 1, 8, 2.0, 16, 2, 5, 10)
    for ms in trust.CASES.values():
        scenario = load_scenario(trust.scenario_file(settings, ms))
        assert scenario.sweep.repeats == 8 and scenario.sweep.workers == (1,)
        assert scenario.workloads[0].requests == ((f"/cpu?ms={ms}", 1.0),)


def test_a_regression_row_shows_ratio_interval_and_threshold():
    result = trust.result_of("+30 %", "plus30-1", 1, compare_json(summary(SLOW)))
    assert (result.outcome, result.status) == ("regression", 1)
    assert result.rps.startswith("0.769 [0.7") and result.threshold == "10.0% default"
    assert result.why == "2 metric(s) got worse: rps cpu/rr/1, p50_ms cpu/rr/1"


def test_an_untrusted_run_says_which_run_and_why_and_is_told_apart_when_disturbed():
    busy = edit_points(summary(BASE), lambda p: p["repeat"] < 3, other=120.0)
    data = compare_json(busy)
    result = trust.result_of("A/A", "aa-1", 3, data)
    assert result.outcome == "inconclusive"
    assert result.why == "current: 3 untrusted, e.g. outside CPU 120 % of a core (limit 25 %)"
    assert trust.disturbed(data)
    generator = compare_json(summary(BASE, verdict="generator"))
    assert not trust.disturbed(generator)  # not the machine's noise: never rerun
    assert "verdict 'generator'" in trust.result_of("A/A", "aa-2", 3, generator).why


def test_targets_are_counted_as_the_issue_states_them():
    def results(aa, plus30, plus10, burner):
        out = [trust.Result("A/A", "aa", o, 0) for o in aa]
        out += [trust.Result("+30 %", "p30", o, 0) for o in plus30]
        out += [trust.Result("+10 %", "p10", o, 0) for o in plus10]
        return out + [trust.Result("burner", "b", burner, 3)]

    good = results(
        ["unchanged"] * 4 + ["inconclusive"],
        ["regression"] * 5,
        ["regression", "inconclusive"] * 2 + ["regression"],
        "inconclusive",
    )
    assert [met for _, met, _ in trust.targets(good, 5)] == [True, True, True, True]
    bad = results(
        ["unchanged"] * 4 + ["regression"],
        ["regression"] * 4 + ["inconclusive"],
        ["regression"] * 4 + ["unchanged"],
        "unchanged",
    )
    assert [met for _, met, _ in trust.targets(bad, 5)] == [False, False, False, False]
    assert trust.targets(bad, 5)[2][2] == "4 regression, 0 inconclusive, 1 unchanged"
