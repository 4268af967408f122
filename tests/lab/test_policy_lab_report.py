"""The policy comparison on known numbers: the table's medians and spreads per workload,
workers, fault and policy; the lowest p99 per case; the call against queueing theory (matches,
contradicts, tie, untrusted); the section appears only when a scheduler beyond Node's is swept."""

import pandas as pd
import pytest

from clusterlab.lab.analysis.policies import cases, compares_policies, fault_label, policy_table
from clusterlab.lab.output.policies import case_line, comparison_table

pytestmark = pytest.mark.parallel_ok  # starts no load: runs beside the cluster tests

SLOW = {"kind": "slow", "factor": 4.0, "length": 5.0, "target": "slot:1", "workloads": ["slowed"]}


def points(p99: dict[str, list[float]], workload="mixed", verdict="unsaturated") -> pd.DataFrame:
    rows = []
    for policy, values in p99.items():
        for repeat, value in enumerate(values):
            rows.append(
                {
                    "status": "ok",
                    "workload": workload,
                    "workers": 4,
                    "policy": policy,
                    "repeat": repeat,
                    "p50_ms": value / 4,
                    "p99_ms": value,
                    "p999_ms": value * 2,
                    "max_ms": value * 3,
                    "jain_requests": 0.99,
                    "verdict": verdict,
                }
            )
    return pd.DataFrame(rows)


def test_the_table_has_each_policys_median_and_range_over_repeats():
    table = policy_table(points({"rr": [30, 20, 40], "jiq": [10, 12, 11]}), [SLOW])
    rr = table[table["policy"] == "rr"].iloc[0]
    assert (rr["p99_ms"], rr["p99_ms_min"], rr["p99_ms_max"]) == (30, 20, 40)
    assert (rr["max_ms"], rr["repeats"], rr["fault"]) == (90, 3, "none")
    shown = comparison_table(table)
    assert (
        shown.loc[0, "p99 ms"] == "30.0 [20.0–40.0]" and shown.loc[1, "p50 ms"] == "2.8 [2.5–3.0]"
    )


def test_a_fault_kept_to_a_workload_labels_only_that_workload():
    assert fault_label([SLOW], "slowed") == "slow ×4 for 5 s (slot:1)"
    assert fault_label([SLOW], "mixed") == "none"


def test_informed_policies_clearly_ahead_of_blind_ones_match_theory():
    [case] = cases(
        policy_table(
            points(
                {"rr": [30, 25, 40], "none": [50, 45, 60], "p2c": [12, 9, 15], "jiq": [10, 8, 11]}
            ),
            [],
        )
    )
    assert (case.best, case.runner_up, case.separated, case.theory) == (
        "jiq",
        "p2c",
        False,
        "matches",
    )
    assert "jiq p99 10.0 ms vs rr 30.0 ms" in case_line(case)
    assert "none (a shared accept queue the free workers pull from) 50.0 ms" in case.note
    assert "lowest p99 jiq (its range overlaps p2c's); matches queueing theory" in case_line(case)


def test_blind_policies_clearly_ahead_contradict_theory():
    [case] = cases(policy_table(points({"rr": [5, 4, 6], "least-conn": [20, 18, 25]}), []))
    assert case.best == "rr" and case.separated and case.theory == "contradicts"
    assert "does NOT match queueing theory" in case_line(case)


def test_overlapping_ranges_are_a_tie_and_one_repeat_is_not_tested():
    [case] = cases(policy_table(points({"rr": [10, 14, 20], "p2c": [9, 12, 16]}), []))
    assert case.theory == "tie" and "ranges over repeats overlap" in case.note
    [once] = cases(policy_table(points({"rr": [10], "p2c": [9]}), []))
    assert once.theory == "tie" and "one repeat: not tested" in once.note
    assert not once.separated and "p2c (one repeat: not tested against rr)" in case_line(once)


def test_a_generator_bound_case_is_not_compared_with_theory():
    [case] = cases(
        policy_table(points({"rr": [30, 25, 40], "jiq": [10, 8, 11]}, verdict="generator"), [])
    )
    assert case.theory == "untrusted" and "rr, jiq" in case.note or "jiq, rr" in case.note


def test_the_section_needs_a_scheduler_beyond_nodes_policies():
    assert not compares_policies(["rr", "none"]) and not compares_policies(["p2c"])
    assert compares_policies(["rr", "p2c"]) and compares_policies(["none", "mod:Mine"])


def test_the_section_and_the_plot_are_made_from_the_same_table(tmp_path):
    from types import SimpleNamespace

    from clusterlab.lab.output import policies
    from clusterlab.lab.output.sections import PLOT_HELP, Block

    frame = pd.concat(
        [
            points({"rr": [30, 25, 40], "jiq": [10, 8, 11]}),
            points({"rr": [60, 50, 70], "jiq": [20, 18, 22]}, workload="slowed"),
        ]
    )
    scenario = {"sweep": {"policies": ["rr", "jiq"]}, "faults": [SLOW]}
    analysis = SimpleNamespace(scenario=scenario, points=frame, meta={})
    blocks = policies.blocks(analysis, Block)
    assert [b.kind for b in blocks] == ["h2", "p", "table", "p", "p"]
    assert blocks[2].table["fault"].tolist() == ["none", "none", *["slow ×4 for 5 s (slot:1)"] * 2]
    assert blocks[4].text.startswith(
        "slowed, 4 workers, fault slow ×4 for 5 s (slot:1): lowest p99 jiq"
    )
    drawn = policies.plot(analysis, tmp_path / "policies.png")
    assert drawn is not None and drawn.stat().st_size > 10_000
    assert "policies" in PLOT_HELP
    node_only = SimpleNamespace(
        scenario={**scenario, "sweep": {"policies": ["rr", "none"]}}, points=frame
    )
    assert (
        policies.blocks(node_only, Block) == []
        and policies.plot(node_only, tmp_path / "x.png") is None
    )


def test_a_limited_policy_is_left_out_of_the_call_and_named():
    frame = pd.concat(
        [
            points({"rr": [30, 25, 40], "jiq": [10, 8, 11]}),
            points({"p2c": [5, 4, 6]}, verdict="machine"),
        ]
    )
    [case] = cases(policy_table(frame, []))
    assert case.best == "p2c" and case.theory == "matches"
    assert case.note.startswith("jiq p99 10.0 ms vs rr 30.0 ms")
    assert case.note.endswith("(p2c left out: limited by the load or the machine, or not faithful)")
