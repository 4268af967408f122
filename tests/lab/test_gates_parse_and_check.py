"""Gates pass and fail as written: parsing of the [gates] table (units, filters, lists, errors as
one line) and the check on a run's summary."""

import pytest
from compare_fixtures import summary

from clusterlab.lab.ci.gates import check_gates
from clusterlab.lab.config.gates import parse_gates
from clusterlab.lab.config.scenario import ScenarioError, parse_scenario

pytestmark = pytest.mark.parallel_ok  # parsing and recorded summaries: starts no process

RUN = summary(
    {
        ("cpu", "rr", 1): [500, 510, 490],
        ("cpu", "rr", 2): [900, 910, 890],
        ("cpu", "none", 2): [800, 810, 790],
    },
    p99=40.0,
    jain=0.97,
    failure_ratio=0.0005,
)


def verdicts(table):
    return [(r.name, r.passed) for r in check_gates(parse_gates(table), RUN)]


def test_conditions_pass_and_fail_as_written():
    assert all(ok for _, ok in verdicts({"p99_ms": "< 50"}))
    assert not any(ok for _, ok in verdicts({"p99": "< 40"}))  # 40 < 40 is false
    assert all(ok for _, ok in verdicts({"p99": "<= 40ms"}))
    assert all(ok for _, ok in verdicts({"p99_ms": "< 0.05s"}))
    assert all(ok for _, ok in verdicts({"fairness.jain": "> 0.95"}))
    assert not any(ok for _, ok in verdicts({"jain": ">= 0.98"}))
    assert all(ok for _, ok in verdicts({"failure_ratio": "< 0.1%"}))
    assert not any(ok for _, ok in verdicts({"failure_ratio": "< 0.001%"}))


def test_median_over_repeats_per_group_and_filters():
    assert verdicts({"rps": "> 600"}) == [
        ("cpu/rr/1", False),
        ("cpu/rr/2", True),
        ("cpu/none/2", True),
    ]
    assert verdicts({"rps{workers=2}": ["> 600", "< 900"]}) == [
        ("cpu/rr/2", True),
        ("cpu/none/2", True),
        ("cpu/rr/2", False),
        ("cpu/none/2", True),
    ]
    assert verdicts({"rps{workload=cpu,policy=rr,workers=1}": "== 500"}) == [("cpu/rr/1", True)]


def test_a_gate_that_matches_nothing_fails():
    assert verdicts({"rps{workload=typo}": "> 0"}) == [("(no matching points)", False)]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"p98": "< 1"}, "gates.p98: expected a metric"),
        ({"p99_ms": "about 50"}, 'gates.p99_ms: expected a condition like "< 50"'),
        ({"rps": "> 5ms"}, "gates.rps: expected no time unit on rps"),
        ({"rps{host=a}": "> 5"}, "expected filters like workload=NAME"),
        ({"rps": []}, "gates.rps: expected a condition"),
    ],
)
def test_bad_gates_are_one_line_scenario_errors(table, message):
    data = {
        "target": {"kind": "builtin"},
        "sweep": {"workers": [1]},
        "workloads": {"a": {"/hello": 1}},
        "load": {"users": 1, "duration": 1},
        "gates": table,
    }
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(data, "x.toml")
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert str(caught.value).startswith("x.toml: gates")


def test_gates_are_part_of_the_scenario_and_its_record():
    data = {
        "target": {"kind": "builtin"},
        "sweep": {"workers": [1]},
        "workloads": {"a": {"/hello": 1}},
        "load": {"users": 1, "duration": 1},
        "gates": {"p99": "< 50"},
    }
    scenario = parse_scenario(data, "x.toml")
    assert [g.text for g in scenario.gates] == ["p99 < 50"]
    assert scenario.to_dict()["gates"] == {"p99": "< 50"}
