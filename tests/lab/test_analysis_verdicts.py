"""The verdict of a point — target, generator, machine or unsaturated — from the CPU each side
used in its window (``analysis.verdicts``), on recorded figures: each rule, its borderline, and
the order in which the rules apply."""

import math

import pytest

from clusterlab.lab.analysis.verdicts import (
    LOAD_SMALL_PCT,
    MACHINE_FULL_PCT,
    OUTSIDE_PCT,
    TARGET_SATURATED_PCT,
    Usage,
    Verdict,
    judge,
    point_usage,
    point_verdict,
)

pytestmark = pytest.mark.parallel_ok  # starts no load: runs beside the cluster tests

LIMIT = 85.0


def usage(**changes: float) -> Usage:
    """2 CPUs shared, a 2-worker target at half its CPU, one locust process at 40 %."""
    base = dict(
        target=100.0,
        target_capacity=200.0,
        worker_max=50.0,
        load_max=40.0,
        load_total=40.0,
        machine=70.0,
        cpus=2,
        shared=True,
    )
    return Usage(**{**base, **changes})


def test_a_target_using_nearly_all_its_cpu_is_target_bound():
    verdict, reason = judge(usage(target=0.9 * 200, worker_max=90), LIMIT)
    assert verdict is Verdict.TARGET
    assert "180% of a core, 90% of the 2 cores" in reason


def test_just_below_the_target_threshold_is_not_target_bound():
    just_below = TARGET_SATURATED_PCT / 100 * 200 - 1
    assert judge(usage(target=just_below, worker_max=89), LIMIT)[0] is Verdict.UNSATURATED


def test_one_hot_worker_at_its_core_makes_the_target_the_limit():
    # SCHED_NONE put every keep-alive connection on one worker: the target as a whole used half
    # its CPU, but that worker could not go faster
    verdict, reason = judge(usage(target=100, worker_max=TARGET_SATURATED_PCT), LIMIT)
    assert verdict is Verdict.TARGET and "busiest worker used 90%" in reason


def test_a_load_process_at_its_core_is_generator_bound():
    verdict, reason = judge(usage(load_max=LIMIT, load_total=LIMIT), LIMIT)
    assert verdict is Verdict.GENERATOR and "85% of a core (limit 85%)" in reason
    assert judge(usage(load_max=LIMIT - 0.5), LIMIT)[0] is not Verdict.GENERATOR


def test_a_saturated_target_wins_over_a_busy_load_process():
    # both at their limit: the target's own ceiling is what the rate shows
    assert judge(usage(target=190, load_max=95), LIMIT)[0] is Verdict.TARGET


def test_shared_cpus_full_while_the_load_used_little_is_target_bound():
    small = LOAD_SMALL_PCT * 2  # % of one core: exactly LOAD_SMALL_PCT of 2 CPUs
    verdict, reason = judge(
        usage(target=170, machine=MACHINE_FULL_PCT, load_total=small, load_max=small), LIMIT
    )
    assert verdict is Verdict.TARGET and "while the load used 15% of them" in reason


def test_shared_cpus_full_because_of_processes_outside_the_run_are_machine_bound():
    busy = usage(target=62, machine=99, load_total=27, load_max=27, outside=OUTSIDE_PCT + 1)
    verdict, reason = judge(busy, LIMIT)
    assert verdict is Verdict.MACHINE and "outside the run 26% of a core" in reason
    assert judge(usage(target=62, machine=99, load_total=27, load_max=27), LIMIT)[0] is (
        Verdict.TARGET
    )


def test_shared_cpus_full_with_a_load_taking_more_than_a_small_part_is_machine_bound():
    # the case that made rr look as fast as none: locust at 80 % of a core, CPUs 95 % busy,
    # a 4-worker target at 55 % of its CPU
    verdict, reason = judge(usage(target=110, load_max=80, load_total=80, machine=95), LIMIT)
    assert verdict is Verdict.MACHINE
    assert "CPUs 95% busy but neither side at its limit" in reason


def test_with_separate_cpus_a_full_machine_never_makes_the_target_the_limit():
    split = usage(target=170, machine=95, load_total=10, load_max=10, shared=False)
    assert judge(split, LIMIT)[0] is Verdict.MACHINE


def test_nothing_near_a_limit_is_unsaturated():
    verdict, reason = judge(usage(machine=MACHINE_FULL_PCT - 1), LIMIT)
    assert verdict is Verdict.UNSATURATED and "latency and the number of clients" in reason


def test_a_results_row_is_judged_from_its_columns_and_placement():
    row = {
        "status": "ok",
        "workers": 4,
        "workers_cpu_pct": 260.0,
        "primary_cpu_pct": 20.0,
        "busiest_worker_cpu_pct": 70.0,
        "gen_cpu_max_pct": 60.0,
        "gen_cpu_pct": 60.0,
        "machine_cpu_pct": 90.0,
        "cpus": 4,
        "target_cpus": 3,
        "load_cpus": 1,
        "cpu_shared": False,
    }
    u = point_usage(row, default_cpus=99)
    assert (u.target, u.target_capacity, u.cpus, u.shared) == (280.0, 300.0, 4, False)
    assert point_verdict(row, LIMIT, 99)[0] is Verdict.TARGET  # 280 of 300 ≥ 90 %
    assert point_verdict({**row, "status": "failed"}, LIMIT, 99) == (None, "")


def test_a_row_from_before_cpu_placement_was_recorded_shares_every_cpu():
    row = {"status": "ok", "workers": 1, "workers_cpu_pct": 50.0, "machine_cpu_pct": 50.0}
    u = point_usage(row, default_cpus=2)
    assert (u.cpus, u.target_capacity, u.shared) == (2, 100.0, True)
    assert math.isnan(u.load_max) and math.isnan(u.worker_max)


@pytest.mark.parametrize("workers, capacity", [(1, 100.0), (2, 200.0), (8, 200.0), (0, 200.0)])
def test_the_target_may_use_min_of_its_cpus_and_its_workers(workers, capacity):
    row = {"status": "ok", "workers": workers, "target_cpus": 2, "cpus": 2}
    assert point_usage(row, default_cpus=2).target_capacity == capacity
