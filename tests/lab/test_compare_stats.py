"""The comparison's statistics on synthetic samples with known answers, and its verdict rules
(threshold AND significance, direction, repeats, machine-independent ratios, other machines)."""

import math

import pytest
from compare_fixtures import summary

from clusterlab.lab.ci.compare import compare, judge, metric_samples, min_p_value


def test_min_p_value_is_the_exact_u_test_floor():
    assert min_p_value(5, 5) == pytest.approx(2 / 252)
    assert min_p_value(3, 3) == pytest.approx(0.1)
    assert min_p_value(0, 5) == 1.0


def test_a_clear_slowdown_of_a_higher_is_better_metric_is_worse():
    verdict, ratio, p, _ = judge([100, 101, 99, 100, 102], [80, 81, 79, 80, 82], +1)
    assert verdict == "worse"
    assert ratio == pytest.approx(0.8)
    assert p == pytest.approx(2 / 252)  # complete separation: the exact two-sided floor


def test_the_same_change_of_a_lower_is_better_metric_is_better():
    verdict, _, _, _ = judge([100, 101, 99, 100, 102], [80, 81, 79, 80, 82], -1)
    assert verdict == "better"


def test_a_significant_change_below_the_threshold_is_unchanged():
    verdict, ratio, p, _ = judge([100, 101, 99, 100, 102], [95, 96, 94, 95, 97], +1)
    assert verdict == "unchanged" and ratio == pytest.approx(0.95) and p < 0.01


def test_a_large_but_noisy_change_is_not_significant():
    verdict, ratio, p, note = judge([100, 60, 140, 90, 110], [80, 50, 130, 70, 90], +1)
    assert ratio == pytest.approx(0.8)
    assert verdict == "unchanged" and p > 0.01 and note.startswith("~")


def test_too_few_repeats_say_so_instead_of_guessing():
    verdict, _, p, note = judge([100, 101, 99], [50, 51, 49], +1)
    assert verdict == "not comparable" and p is None and "insufficient repeats" in note
    assert judge([100, 101, 99], [50, 51, 49], +1, alpha=0.2)[0] == "worse"


def test_per_metric_threshold_and_zero_baselines():
    assert judge([100] * 5, [115] * 5, -1, threshold=0.2)[0] == "unchanged"
    assert judge([100] * 5, [115] * 5, -1, threshold=0.1)[0] == "worse"
    assert judge([0.0] * 5, [0.0] * 5, -1)[0] == "unchanged"
    verdict, ratio, _, _ = judge([0.0] * 5, [0.01, 0.02, 0.01, 0.03, 0.01], -1)
    assert verdict == "worse" and math.isinf(ratio)


def test_derived_ratios_pair_repeats():
    s = summary(
        {
            ("cpu", "rr", 1): [500] * 5,
            ("cpu", "rr", 2): [800] * 5,
            ("cpu", "none", 1): [500] * 5,
            ("cpu", "none", 2): [1000] * 5,
        }
    )
    samples = metric_samples(s)
    assert samples[("scaling_efficiency", ("cpu", "rr", 2))] == [0.8] * 5
    assert samples[("scaling_efficiency", ("cpu", "none", 2))] == [1.0] * 5
    assert samples[("rr_none_ratio", ("cpu", "rr/none", 2))] == [0.8] * 5
    assert samples[("rr_none_ratio", ("cpu", "rr/none", 1))] == [1.0] * 5


def test_identical_runs_have_no_regression():
    s = summary({("cpu", "rr", 1): [500, 510, 490, 505, 495], ("cpu", "rr", 2): [900] * 5})
    result = compare(s, s)
    assert not result.regressions and result.rows
    assert {r.verdict for r in result.rows} == {"unchanged"}


def test_a_slower_machine_only_gates_on_machine_independent_ratios():
    base = summary(
        {("cpu", "rr", 1): [500, 510, 490, 505, 495], ("cpu", "rr", 2): [900, 910, 890, 905, 895]}
    )
    slow = summary(
        {("cpu", "rr", 1): [250, 255, 245, 252, 248], ("cpu", "rr", 2): [450, 455, 445, 452, 448]},
        cpu_model="Slow CPU",
    )
    result = compare(base, slow)
    assert any("different machines" in w for w in result.warnings)
    rps = [r for r in result.rows if r.metric == "rps"]
    assert rps and all(r.verdict == "worse" and not r.gating for r in rps)
    assert not result.regressions  # scaling efficiency is unchanged: not a regression
    worse_scaling = summary(
        {("cpu", "rr", 1): [250, 255, 245, 252, 248], ("cpu", "rr", 2): [300, 305, 295, 302, 298]},
        cpu_model="Slow CPU",
    )
    assert [r.metric for r in compare(base, worse_scaling).regressions] == ["scaling_efficiency"]
