"""The plan: a scenario's sweep turned into the ordered list of points the runner measures.

Points are interleaved (repeat → worker count → policy → workload) so that drift of the machine
touches every policy alike; consecutive points that share a target configuration share one target
(except with faults: a point with faults starts from a fresh target, all workers up, no restarts
counted yet).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from clusterlab.lab.config.scenario import Load, Scenario, resolve_workers

NOT_APPLICABLE = "n/a"


@dataclass(frozen=True)
class Point:
    """One measurement: a target configuration, a workload and a repeat number."""

    index: int
    repeat: int
    workers: int
    workers_label: str
    policy: str
    workload: str

    @property
    def target_key(self) -> tuple[int, int, str]:
        """Points with the same key run against the same started target."""
        return (self.repeat, self.workers, self.policy)

    def label(self) -> str:
        return (
            f"{self.workload} · {self.policy} · {self.workers} workers · repeat {self.repeat + 1}"
        )


def build_plan(scenario: Scenario, parallelism: int) -> list[Point]:
    """Every point of the sweep in run order."""
    if scenario.target.kind == "url":
        worker_counts: list[tuple[int, str]] = [(0, NOT_APPLICABLE)]
        policies: tuple[str, ...] = (NOT_APPLICABLE,)
    else:
        seen: dict[int, str] = {}
        for written in scenario.sweep.workers:
            seen.setdefault(resolve_workers(written, parallelism), str(written))
        worker_counts = sorted(seen.items())
        policies = scenario.sweep.policies
    points: list[Point] = []
    for repeat, (workers, label), policy, workload in itertools.product(
        range(scenario.sweep.repeats), worker_counts, policies, scenario.workloads
    ):
        points.append(Point(len(points), repeat, workers, label, policy, workload.name))
    return points


def group_by_target(points: list[Point], fresh: bool = False) -> list[list[Point]]:
    """Consecutive runs of points that share one target start; one point each when ``fresh``."""
    if fresh:
        return [[point] for point in points]
    return [list(group) for _, group in itertools.groupby(points, key=lambda p: p.target_key)]


def load_processes(load: Load, workers: int, parallelism: int, load_cpus: int | None = None) -> int:
    """Locust processes for a point; ``auto`` takes one per CPU of the load's own set when load
    and target have separate CPUs (``load_cpus``), else the CPUs the workers leave free, at
    least one, and never all of them."""
    if load.processes != "auto":
        return load.processes
    if load_cpus is not None:
        return load_cpus
    return max(1, min(parallelism - 1, parallelism - workers))


def estimate_seconds(scenario: Scenario, points: list[Point]) -> float:
    """A rough duration of the whole run, for the ETA before the first point has finished."""
    per_point = scenario.load.warmup + scenario.load.duration + 2.0
    per_target = 3.0
    targets = group_by_target(points, fresh=bool(scenario.faults))
    return per_point * len(points) + per_target * len(targets)
