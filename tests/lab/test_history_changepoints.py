"""Change points on series with known answers: a step of known size at a known run, two steps, a
flat noisy series (false positives at the stated level), a slow drift, short and constant series,
and the newest run's σ rule."""

import math

import numpy as np
import pytest

from clusterlab.lab.ci import changepoints as cp

pytestmark = pytest.mark.parallel_ok  # starts no load: runs beside the cluster tests


def noisy(levels: list[tuple[int, float]], noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    steps = np.array([level for count, level in levels for _ in range(count)])
    return steps * (1 + rng.normal(0, noise, len(steps)))


@pytest.mark.parametrize("seed", range(5))
def test_a_step_of_known_size_is_found_at_its_run(seed):
    series = noisy([(16, 100.0), (8, 87.0)], noise=0.02, seed=seed)

    found = cp.change_points(series)

    assert len(found) == 1
    (point,) = found
    assert abs(point.index - 16) <= 1
    assert point.change == pytest.approx(-0.13, abs=0.03)
    assert point.p_value <= cp.DEFAULT_ALPHA
    assert point.before == pytest.approx(series[: point.index].mean())
    assert point.after == pytest.approx(series[point.index :].mean())


def test_two_steps_are_both_found_in_order():
    series = noisy([(12, 100.0), (12, 120.0), (12, 95.0)], noise=0.02, seed=3)

    found = cp.change_points(series)

    assert [abs(p.index - want) <= 1 for p, want in zip(found, (12, 24), strict=True)] == [
        True,
        True,
    ]
    assert found[0].change > 0.15 and found[1].change < -0.15


def test_a_flat_noisy_series_shows_change_points_at_the_stated_false_positive_level():
    """Every series is flat: any change point is a false positive. At alpha = 1 %, 300 series
    give 3 on average; more than 10 has probability below 0.03 % (binomial)."""
    rng = np.random.default_rng(7)
    flagged = sum(
        bool(cp.change_points(rng.normal(100, 3, 30), min_change=0.0)) for _ in range(300)
    )

    assert flagged <= 10


def test_the_false_positive_level_follows_alpha():
    """At alpha = 20 % the same flat series are flagged about 60 times in 300: the test's level is
    what alpha says, not a by-product of the minimum change."""
    rng = np.random.default_rng(11)
    flagged = sum(
        bool(cp.change_points(rng.normal(100, 3, 30), alpha=0.2, min_change=0.0))
        for _ in range(300)
    )

    assert 35 <= flagged <= 85


def test_a_slow_drift_is_reported_as_changes_in_its_direction():
    drift = 100 * (1 - np.linspace(0, 0.25, 40))
    series = drift * (1 + np.random.default_rng(2).normal(0, 0.01, 40))

    found = cp.change_points(series)

    assert found, "a 25 % drift over 40 runs went unnoticed"
    assert all(p.change < 0 for p in found)
    assert series[found[-1].index :].mean() < 0.9 * series[: found[0].index].mean()


def test_a_significant_change_smaller_than_min_change_is_dropped():
    series = noisy([(15, 100.0), (15, 103.0)], noise=0.003, seed=1)

    assert [p.index for p in cp.change_points(series, min_change=0.0)] == [15]
    assert cp.change_points(series, min_change=0.05) == []


def test_series_too_short_or_constant_have_no_change_point():
    assert cp.best_split([1.0, 2.0, 3.0, 10.0, 11.0], min_size=3) == (0, 1.0)
    assert cp.change_points([5.0] * 20) == []
    assert cp.change_points([]) == []


def test_non_finite_values_are_refused():
    with pytest.raises(ValueError, match="finite"):
        cp.change_points([1.0, math.nan, 2.0])


def test_a_change_from_zero_has_an_infinite_relative_size():
    series = [0.0] * 10 + [0.02, 0.021, 0.019, 0.02, 0.022]

    (point,) = cp.change_points(series)

    assert point.index == 10 and point.change == math.inf


def test_the_newest_run_beyond_four_sigma_is_an_outlier_and_within_noise_is_not():
    history = list(noisy([(20, 100.0)], noise=0.01, seed=4))

    low, beyond = cp.latest_outlier([*history, 80.0])
    assert beyond and low is not None and low.z < -4 and low.runs == 20
    assert low.change == pytest.approx(80 / np.mean(history) - 1)
    same, beyond = cp.latest_outlier([*history, float(np.mean(history))])
    assert not beyond and same is not None and abs(same.z) < 0.5


def test_the_sigma_rule_counts_only_runs_since_the_last_change_and_needs_five():
    series = [100.0] * 10 + [80.0, 81.0, 79.0, 80.0, 80.5, 80.0]

    since, beyond = cp.latest_outlier(series, since=10)
    assert since is not None and since.runs == 5 and not beyond
    assert cp.latest_outlier([100.0, 101.0, 99.0, 100.0, 90.0]) == (None, False)
