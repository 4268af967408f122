"""Sweep plans: relative worker counts, interleaved order, target sharing, locust processes."""

from pathlib import Path

import pytest

from clusterlab.lab.config.plan import build_plan, group_by_target, load_processes, resolve_workers
from clusterlab.lab.config.scenario import Load, parse_scenario

pytestmark = pytest.mark.parallel_ok  # starts no load: runs beside the cluster tests


def _scenario(**sweep):
    data = {
        "target": {"kind": "builtin"},
        "sweep": {"workers": [1], **sweep},
        "load": {"users": 1, "duration": 1},
        "workloads": {"a": {"/hello": 1}, "b": {"/cpu": 1}},
    }
    return parse_scenario(data, "test.toml")


@pytest.mark.parametrize(
    ("written", "cpus", "expected"),
    [(3, 8, 3), ("1x", 4, 4), ("0.5x", 2, 1), ("0.5x", 1, 1), ("1.5x", 4, 6)],
)
def test_resolve_workers(written, cpus, expected):
    assert resolve_workers(written, cpus) == expected


def test_points_interleave_policies_within_each_repeat_and_dedupe_counts():
    points = build_plan(_scenario(workers=["1x", 2, 4], policies=["rr", "none"], repeats=2), 2)
    order = [(p.repeat, p.workers, p.policy, p.workload) for p in points]
    assert order[:4] == [
        (0, 2, "rr", "a"),
        (0, 2, "rr", "b"),
        (0, 2, "none", "a"),
        (0, 2, "none", "b"),
    ]
    assert len(points) == 2 * 2 * 2 * 2
    assert [p.index for p in points] == list(range(len(points)))


def test_points_sharing_a_target_are_grouped():
    groups = group_by_target(build_plan(_scenario(policies=["rr", "none"]), 2))
    assert [[p.workload for p in g] for g in groups] == [["a", "b"], ["a", "b"]]
    assert {g[0].policy for g in groups} == {"rr", "none"}


def test_auto_processes_leave_the_workers_their_cpus_but_never_zero():
    auto = Load(users=1, duration=1, processes="auto")
    assert load_processes(auto, workers=2, parallelism=8) == 6
    assert load_processes(auto, workers=8, parallelism=8) == 1
    assert load_processes(auto, workers=1, parallelism=8) == 7
    assert load_processes(Load(users=1, duration=1, processes=3), 1, 8) == 3


def test_bundled_scenarios_plan_without_error():
    for path in Path(__file__).resolve().parents[2].joinpath("scenarios").glob("*.toml"):
        from clusterlab.lab.config.scenario import load_scenario

        assert build_plan(load_scenario(path), 2)
