"""The comparison's statistics on synthetic samples with known answers: the bootstrap interval of
the ratio of medians, verdicts taken on it (wholly beyond, across, wholly inside the threshold),
direction, repeats, the p-value as information, machine-independent ratios, other machines."""

import math
import statistics

import numpy as np
import pytest
from compare_fixtures import summary

from clusterlab.lab.ci.compare import (
    MIN_REPEATS,
    RESAMPLES,
    bootstrap_interval,
    compare,
    judge,
    metric_samples,
)

pytestmark = pytest.mark.parallel_ok  # starts no load: runs beside the cluster tests

BASE = [100, 101, 99, 100, 102]


def test_the_interval_is_the_percentile_interval_of_resampled_ratios_of_medians():
    b, c = [100, 104, 96, 101, 99, 103], [90, 95, 88, 92, 91]
    low, high = bootstrap_interval(b, c)
    # the same computation written out: resample each run's repeats, ratio of medians
    rng = np.random.default_rng(0)
    mb = np.median(np.array(b)[rng.integers(0, 6, (RESAMPLES, 6))], axis=1)
    mc = np.median(np.array(c)[rng.integers(0, 5, (RESAMPLES, 5))], axis=1)
    ratios = np.sort(mc / mb)
    assert (low, high) == (ratios[250], ratios[RESAMPLES - 251])
    assert low < statistics.median(c) / statistics.median(b) < high
    # bounded by the extreme ratios, and deterministic (fixed seed)
    assert min(c) / max(b) <= low and high <= max(c) / min(b)
    assert bootstrap_interval(b, c) == (low, high)


def test_the_interval_widens_with_the_level():
    b, c = [100, 104, 96, 101, 99, 103, 98, 102], [90, 95, 88, 92, 91, 93, 89, 94]
    low95, high95 = bootstrap_interval(b, c, alpha=0.05)
    low999, high999 = bootstrap_interval(b, c, alpha=0.001)
    assert low999 <= low95 and high95 <= high999 and (low999, high999) != (low95, high95)


def test_an_interval_wholly_beyond_the_threshold_is_worse_or_better_by_direction():
    slower = [80, 81, 79, 80, 82]
    j = judge(BASE, slower, +1)
    assert j.verdict == "worse" and j.ratio == pytest.approx(0.8)
    assert j.interval[1] < 1 / 1.1
    assert j.p_value == pytest.approx(2 / 252)  # information: complete separation's exact p
    assert judge(BASE, slower, -1).verdict == "better"


def test_an_interval_wholly_inside_the_threshold_is_unchanged_however_small_p_is():
    j = judge(BASE, [95, 96, 94, 95, 97], +1)
    assert j.verdict == "unchanged" and j.ratio == pytest.approx(0.95) and j.p_value < 0.01
    assert j.interval[0] >= 1 / 1.1 and j.interval[1] <= 1.1


def test_an_interval_across_the_threshold_is_inconclusive_even_with_a_large_ratio():
    j = judge([100, 60, 140, 90, 110], [80, 50, 130, 70, 90], +1)
    assert j.ratio == pytest.approx(0.8)
    assert j.verdict == "inconclusive" and j.interval[0] < 1 / 1.1 < j.interval[1]
    assert "worse bound 0.909" in j.note


def test_a_change_at_the_threshold_is_never_unchanged():
    """10 % more cost per request, measured with a little noise: the interval straddles 1/1.1."""
    base = [1000, 1010, 990, 1005, 995, 1002, 998, 1008]
    slower = [v / 1.1 for v in [1000, 1012, 985, 1003, 996, 1006, 994, 1009]]
    assert judge(base, slower, +1).verdict == "inconclusive"
    assert judge(base, [v / 1.3 for v in base], +1).verdict == "worse"


def test_one_overlapping_repeat_never_makes_a_real_drop_unchanged():
    """13 % fewer requests with one repeat as fast as before: with 5 + 5 repeats the interval
    reaches it (inconclusive: not a pass), with 8 + 8 it is worse; p alone (> 0.01 at 5 + 5)
    would have said unchanged."""
    j = judge(BASE, [87, 88, 86, 101, 87], +1)
    assert j.p_value > 0.01 and j.verdict == "inconclusive"
    base8 = [*BASE, 98, 101, 100]
    assert judge(base8, [87, 88, 86, 101, 87, 88, 86, 87], +1).verdict == "worse"


def test_too_few_repeats_are_not_comparable():
    for b, c in (([100], [50]), ([100, 101, 99], [50, 51, 49])):
        j = judge(b, c, +1)
        assert j.verdict == "not comparable" and j.interval is None and j.p_value is None
        assert f"an interval needs {MIN_REPEATS} a side" in j.note
    assert judge(BASE, [], +1).note == "missing in one run"


def test_per_metric_threshold_and_zero_baselines():
    assert judge([100] * 5, [115] * 5, -1, threshold=0.2).verdict == "unchanged"
    assert judge([100] * 5, [115] * 5, -1, threshold=0.1).verdict == "worse"
    assert judge([0.0] * 5, [0.0] * 5, -1).verdict == "unchanged"
    j = judge([0.0] * 5, [0.01, 0.02, 0.01, 0.03, 0.01], -1)
    assert j.verdict == "worse" and math.isinf(j.ratio) and math.isinf(j.interval[0])


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


def test_identical_runs_are_unchanged_with_every_row_judged():
    s = summary({("cpu", "rr", 1): [500, 510, 490, 505, 495], ("cpu", "rr", 2): [900] * 5})
    result = compare(s, s)
    assert result.rows and {r.verdict for r in result.rows} == {"unchanged"}
    assert (result.outcome, result.exit_status) == ("unchanged", 0)


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
    assert not result.regressions and result.outcome == "unchanged"  # scaling unchanged
    worse_scaling = summary(
        {("cpu", "rr", 1): [250, 255, 245, 252, 248], ("cpu", "rr", 2): [300, 305, 295, 302, 298]},
        cpu_model="Slow CPU",
    )
    assert [r.metric for r in compare(base, worse_scaling).regressions] == ["scaling_efficiency"]
