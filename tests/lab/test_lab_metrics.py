"""Fairness formulas, aggregation and the USL fit, checked against values worked out by hand."""

import math

import numpy as np
import pandas as pd
import pytest

from clusterlab.lab.analysis.metrics import (
    aggregate,
    coefficient_of_variation,
    fairness_columns,
    jain_index,
    max_mean_ratio,
    usl_fit,
)

pytestmark = pytest.mark.parallel_ok  # starts no load: runs beside the cluster tests


def test_jain_index_of_equal_work_is_one():
    assert jain_index([5, 5, 5, 5]) == pytest.approx(1.0)


def test_jain_index_when_k_of_n_workers_share_everything_is_k_over_n():
    assert jain_index([3, 3, 0, 0]) == pytest.approx(2 / 4)
    assert jain_index([7, 0, 0]) == pytest.approx(1 / 3)


def test_jain_index_hand_computed():
    # (1+2+3)^2 / (3 * (1+4+9)) = 36 / 42
    assert jain_index([1, 2, 3]) == pytest.approx(36 / 42)


def test_coefficient_of_variation_uses_population_sd():
    # mean 2, population sd sqrt(2/3)
    assert coefficient_of_variation([1, 2, 3]) == pytest.approx(math.sqrt(2 / 3) / 2)


def test_jain_equals_one_over_one_plus_cv_squared():
    values = [4, 9, 1, 13, 7]
    assert jain_index(values) == pytest.approx(1 / (1 + coefficient_of_variation(values) ** 2))


def test_max_mean_ratio_hand_computed_and_defined_with_a_starved_worker():
    assert max_mean_ratio([1, 3]) == pytest.approx(1.5)
    assert max_mean_ratio([6, 0, 0]) == pytest.approx(3.0)


def test_fairness_of_no_work_is_undefined_not_perfect():
    assert math.isnan(jain_index([0, 0]))
    assert math.isnan(coefficient_of_variation([]))


def test_fairness_columns_count_idle_workers_and_skip_missing_connections():
    rows = [{"requests": 30.0, "connections": float("nan")}, {"requests": 0.0, "connections": None}]
    columns = fairness_columns(rows)
    assert columns["jain_requests"] == pytest.approx(0.5)
    assert columns["max_mean_requests"] == pytest.approx(2.0)
    assert math.isnan(columns["jain_connections"])


def test_aggregate_takes_median_min_max_over_repeats_and_the_repeats_verdicts():
    results = pd.DataFrame(
        {
            "workload": ["w"] * 3,
            "policy": ["rr"] * 3,
            "workers": [2] * 3,
            "status": ["ok"] * 3,
            "rps": [100.0, 300.0, 200.0],
            "p50_ms": [1.0] * 3,
            "p99_ms": [5.0, 7.0, 9.0],
            "failure_ratio": [0.0] * 3,
            "jain_requests": [1.0] * 3,
            "jain_connections": [1.0] * 3,
            "generator_bound": [False, True, False],
            "verdict": ["target", "generator", "target"],
            "low_confidence_p99": [False, False, True],
        }
    )
    row = aggregate(results).iloc[0]
    assert (row["rps"], row["rps_min"], row["rps_max"]) == (200.0, 100.0, 300.0)
    assert row["p99_ms"] == 7.0 and row["repeats"] == 3 and bool(row["generator_bound"])
    assert row["verdict"] == "mixed" and not row["target_bound"]
    assert (row["p99_min"], row["p99_max"], row["jain_requests_min"]) == (5.0, 9.0, 1.0)
    assert row["low_confidence_p99"]
    agreed = aggregate(results.assign(verdict="target", generator_bound=False)).iloc[0]
    assert agreed["verdict"] == "target" and agreed["target_bound"]


def test_usl_fit_recovers_known_parameters_and_peak():
    lam, sigma, kappa = 1000.0, 0.05, 0.002
    n = np.array([1, 2, 4, 8, 16, 32], dtype=float)
    x = lam * n / (1 + sigma * (n - 1) + kappa * n * (n - 1))
    fit = usl_fit(n, x)
    assert fit is not None
    assert fit.lam == pytest.approx(lam, rel=1e-3)
    assert fit.sigma == pytest.approx(sigma, rel=1e-2)
    assert fit.kappa == pytest.approx(kappa, rel=1e-2)
    assert fit.peak_workers == pytest.approx(math.sqrt((1 - sigma) / kappa), rel=1e-2)
    assert fit.r2 == pytest.approx(1.0)


def test_usl_fit_of_linear_scaling_has_no_peak():
    fit = usl_fit([1, 2, 3, 4], [100, 200, 300, 400])
    assert fit is not None and fit.peak_workers is None and fit.kappa == pytest.approx(0, abs=1e-6)


def test_usl_fit_needs_three_worker_counts():
    assert usl_fit([1, 2, 2], [100, 190, 195]) is None
