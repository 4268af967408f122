"""Capacity analysis on known curves: USL with bootstrap intervals (covering the true σ, κ, N*;
a verdict per shape; refused when it cannot say), Little's law per point, Kneedle's knee of a
hockey stick, efficiency and headroom, and the recommendation in words."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from clusterlab.lab.analysis.analysis import load_levels
from clusterlab.lab.analysis.capacity import (
    LITTLE_TOLERANCE,
    capacities,
    capacity_table,
    efficiency,
    knees,
    little_flag,
)
from clusterlab.lab.analysis.recommend import recommend_slo, recommend_throughput
from clusterlab.lab.analysis.usl import capped_usl, fit_with_confidence
from clusterlab.lab.config.slo import parse_slo

pytestmark = pytest.mark.parallel_ok  # starts no load: runs beside the cluster tests

COUNTS = np.array([1, 2, 3, 4, 6, 8] * 3, dtype=float)


def _curve(lam, sigma, kappa, cpus, noise, seed=1):
    rng = np.random.default_rng(seed)
    return capped_usl(COUNTS, lam, sigma, kappa, cpus) * (1 + rng.normal(0, noise, COUNTS.size))


def test_intervals_cover_the_true_coherency_and_peak():
    x = _curve(1000, 0.05, 0.02, cpus=8, noise=0.02)
    fit = fit_with_confidence("cpu", "rr", COUNTS, x, cpus=8)
    assert fit.verdict == "coherency-bound", fit.refused
    assert fit.kappa.low <= 0.02 <= fit.kappa.high
    true_peak = math.sqrt((1 - 0.05) / 0.02)
    assert fit.peak_workers.low <= true_peak <= fit.peak_workers.high
    assert fit.peak_rps.low <= fit.peak_rps.estimate <= fit.peak_rps.high
    assert [w for w, _, _ in fit.predicted] == [1, 2, 3, 4, 6, 8]
    for _, measured, predicted in fit.predicted:
        assert predicted == pytest.approx(measured, rel=0.1)


def test_contention_without_coherency_is_contention_bound_with_its_ceiling():
    x = _curve(1000, 0.2, 0.0, cpus=8, noise=0.02)
    fit = fit_with_confidence("cpu", "rr", COUNTS, x, cpus=8)
    assert fit.verdict == "contention-bound"
    assert fit.sigma.low <= 0.2 <= fit.sigma.high
    assert fit.ceiling_rps == pytest.approx(1000 * 8 / (1 + 0.2 * 7), rel=0.1)


def test_a_flat_line_past_the_cpus_is_cpu_limited_not_coherency_cost():
    x = _curve(1000, 0.0, 0.0, cpus=2, noise=0.01)
    fit = fit_with_confidence("cpu", "rr", COUNTS, x, cpus=2)
    assert fit.cpu_limited == (3, 4, 6, 8)
    assert fit.verdict == "linear in the measured range"
    assert fit.kappa.high < 1e-3


def test_noise_that_hides_the_peak_refuses_the_fit_with_a_reason():
    x = _curve(1000, 0.05, 0.02, cpus=8, noise=0.35, seed=3)
    fit = fit_with_confidence("cpu", "rr", COUNTS, x, cpus=8)
    assert fit.verdict == "refused"
    assert fit.refused


def test_fewer_than_three_counts_is_refused():
    fit = fit_with_confidence("cpu", "rr", [1, 2, 1, 2], [10.0, 19.0, 10.5, 19.5], cpus=2)
    assert (fit.verdict, fit.refused) == ("refused", "fewer than 3 worker counts")


def test_the_intervals_are_the_same_for_the_same_data():
    x = _curve(1000, 0.05, 0.02, cpus=8, noise=0.05)
    one = fit_with_confidence("cpu", "rr", COUNTS, x, cpus=8)
    two = fit_with_confidence("cpu", "rr", COUNTS, x, cpus=8)
    assert one == two


CLOSED = {"status": "ok", "users": 16, "rps": 800.0, "fail_rps": 0.0, "offered_rps": math.nan}


@pytest.mark.parametrize(
    ("row", "flagged"),
    [
        ({**CLOSED, "avg_ms": 20.0}, ""),  # 800 × 0.020 = 16 users: holds
        ({**CLOSED, "avg_ms": 20.0 * (1 + LITTLE_TOLERANCE * 0.9)}, ""),
        ({**CLOSED, "avg_ms": 10.0}, "time lost outside the measured latency"),
        ({**CLOSED, "avg_ms": 30.0}, "more in flight than users"),
        ({**CLOSED, "status": "failed", "avg_ms": 10.0}, ""),
        ({**CLOSED, "offered_rps": 800.0, "users": 40, "avg_ms": 20.0}, ""),
        ({**CLOSED, "offered_rps": 800.0, "users": 10, "avg_ms": 20.0}, "could not hold"),
    ],
)
def test_littles_law_flags_a_point_off_by_more_than_ten_percent(row, flagged):
    found = little_flag(row, wait_s=0.0)
    assert (flagged in found) if flagged else found == ""


def test_littles_law_counts_the_think_time_of_a_closed_model():
    row = {**CLOSED, "avg_ms": 10.0}
    assert little_flag(row, wait_s=0.010) == ""  # 800 × (0.010 + 0.010) = 16


def _sweep(capacity: float, workers: int, policy: str = "rr", repeat: int = 0) -> list[dict]:
    """An open-model sweep of a queue: p99 = 4 ms / (1 − ρ), rps = min(rate, capacity)."""
    rows = []
    for i, rate in enumerate((0.2, 0.4, 0.6, 0.7, 0.8, 0.9, 0.95, 1.1)):
        offered = rate * capacity
        rho = min(rate, 0.99)
        rows.append(
            {
                "point": i,
                "repeat": repeat,
                "mix": "cpu",
                "workload": f"cpu @ {offered:.0f} req/s",
                "policy": policy,
                "workers": workers,
                "status": "ok",
                "offered_rps": offered,
                "level": offered,
                "rps": min(offered, capacity),
                "p50_ms": 2 / (1 - rho),
                "p99_ms": 4 / (1 - rho),
                "p999_ms": 8 / (1 - rho),
                "failure_ratio": 0.0,
                "verdict": "target" if rate >= 0.9 else "unsaturated",
                "search_step": "",
                "workers_cpu_pct": 100.0 * min(rate, 1.0) * min(workers, 2),
                "primary_cpu_pct": 0.0,
                "target_cpus": 2,
                "cpus": 2,
            }
        )
    return rows


def test_kneedle_finds_the_knee_of_a_hockey_stick():
    points = pd.DataFrame(_sweep(1000.0, 1))
    found = knees(points)
    assert len(found) == 1
    knee = found.iloc[0]["knee_rps"]
    assert 600 <= knee <= 950
    assert found.iloc[0]["levels"] == 8


def test_no_knee_with_fewer_than_five_levels():
    points = pd.DataFrame(_sweep(1000.0, 1)[:4])
    assert knees(points).empty


def test_the_highest_rate_within_the_slo_per_worker_count_with_its_bracket():
    slo = parse_slo({"p99_ms": 50})
    rows = _sweep(1000.0, 1) + _sweep(1800.0, 2) + _sweep(1700.0, 4)
    table = capacity_table(capacities(pd.DataFrame(rows), slo)).set_index("workers")
    # p99 = 4 / (1 − ρ) ≤ 50 up to ρ = 0.9; the next level (0.95) misses, target-bound
    assert table.loc[1, "met"] == pytest.approx(900.0)
    assert table.loc[1, "missed"] == pytest.approx(950.0)
    assert table.loc[2, "met"] == pytest.approx(1620.0)
    assert bool(table.loc[1, "systems"])


def test_the_recommendation_answers_the_rate_asked_with_the_fewest_workers():
    slo = parse_slo({"p99_ms": 50, "rate": 1200})
    rows = _sweep(1000.0, 1) + _sweep(1800.0, 2) + _sweep(1700.0, 4)
    rows += _sweep(1000.0, 1, repeat=1) + _sweep(1790.0, 2, repeat=1) + _sweep(1650.0, 4, repeat=1)
    table = capacity_table(capacities(pd.DataFrame(rows), slo))
    advice = recommend_slo(table, slo, slo.rate, cpus=2)
    assert advice.question == "How many workers for 1,200 req/s at p99 ≤ 50 ms?"
    assert advice.answer.startswith("For 1,200 req/s at p99 ≤ 50 ms: 2 workers (rr)")
    assert (advice.workers, advice.policy, advice.best_workers) == (2, "rr", 2)
    assert "within the SLO is 1,616 req/s (1,611–1,620 over repeats)" in advice.answer
    assert "Past one worker per CPU, throughput falls" in advice.answer
    assert not advice.lower_bound


def test_a_rate_nothing_sustains_gets_a_no():
    slo = parse_slo({"p99_ms": 50})
    table = capacity_table(capacities(pd.DataFrame(_sweep(1000.0, 1)), slo))
    advice = recommend_slo(table, slo, 5000.0, cpus=2)
    assert advice.workers is None
    assert "No measured configuration sustained 5,000 req/s" in advice.answer


def test_without_an_slo_the_answer_is_the_most_req_s_among_target_bound_groups():
    aggregates = pd.DataFrame(
        [
            {
                "workload": "cpu",
                "policy": "rr",
                "workers": w,
                "rps": r,
                "rps_min": lo,
                "rps_max": hi,
                "repeats": 2,
                "target_bound": bound,
            }
            for w, r, lo, hi, bound in (
                (1, 400.0, 390.0, 410.0, True),
                (2, 720.0, 700.0, 730.0, True),
                (4, 671.0, 660.0, 680.0, True),
                (8, 9000.0, 9000.0, 9000.0, False),
            )
        ]
    )
    advice = recommend_throughput(aggregates, cpus=2)
    assert advice.answer.startswith("cpu: 2 workers (rr), 720 req/s (700–730 over repeats).")
    assert "Past one worker per CPU, throughput falls (720 req/s at 2 → 671 at 4)" in advice.answer


def test_efficiency_is_req_s_per_core_used_and_headroom_the_cpu_left():
    rows = _sweep(1000.0, 1) + _sweep(1800.0, 2)
    table = efficiency(pd.DataFrame(rows)).set_index("workers")
    # the busiest level: 1000 req/s on one full core; 1800 on two
    assert table.loc[1, "rps_per_core"] == pytest.approx(1000.0)
    assert table.loc[2, "rps_per_core"] == pytest.approx(900.0)
    assert table.loc[1, "headroom"] == pytest.approx(0.0)


def _results(**columns) -> pd.DataFrame:
    base = {"workload": ["cpu", "cpu", "cpu"], "users": [2, 8, 32]}
    base |= {"offered_rps": [math.nan] * 3, "search_step": [math.nan] * 3}
    return pd.DataFrame(base | columns)


def test_a_users_sweep_names_each_group_after_its_level():
    points = load_levels(_results(), {"users_levels": [2, 8, 32]})
    assert points["workload"].tolist() == ["cpu @ 2 users", "cpu @ 8 users", "cpu @ 32 users"]
    assert points["mix"].tolist() == ["cpu"] * 3
    assert points["level"].tolist() == [2.0, 8.0, 32.0]


def test_a_rate_sweep_and_a_searchs_confirmation_are_named_by_rate():
    rates = {"offered_rps": [5.5, 400.0, 400.0], "search_step": ["ramp", "ramp", "confirm"]}
    points = load_levels(_results(**rates), {"rate_levels": []})
    assert points["workload"].tolist() == [
        "cpu @ 5.5 req/s",
        "cpu @ 400 req/s",
        "cpu @ 400 req/s (confirm)",
    ]


def test_a_single_load_level_keeps_the_workload_names():
    points = load_levels(_results(), {"users": 4})
    assert points["workload"].tolist() == ["cpu"] * 3
    assert points["level"].isna().all()


def test_three_points_for_three_parameters_are_refused_not_fitted_with_zero_width():
    fit = fit_with_confidence("cpu", "rr", [1, 2, 4], [335.0, 587.0, 493.0], cpus=2)
    assert fit.verdict == "refused"
    assert fit.refused.startswith("3 points for 3 parameters")
