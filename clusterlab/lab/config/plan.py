"""The plan: a scenario's sweep turned into the ordered list of points the runner measures.

Points are interleaved (repeat → worker count → policy → workload → load level) so that drift of
the machine touches every policy alike; consecutive points that share a target configuration share
one target (except with faults: a point with faults starts from a fresh target, all workers up, no
restarts counted yet). In search mode the plan holds one point per target, which the search
(``running.search``) turns into its probes.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from clusterlab.lab.config.scenario import Load, Scenario, resolve_workers

NOT_APPLICABLE = "n/a"


@dataclass(frozen=True)
class Point:
    """One measurement: a target configuration, a workload, a load level and a repeat number.

    ``users`` and ``rate`` are the point's load (0 / None: the scenario's); ``duration`` its
    measured seconds (None: the scenario's); ``step`` the search's step that chose it (ramp,
    bisect, confirm; empty outside search mode)."""

    index: int
    repeat: int
    workers: int
    workers_label: str
    policy: str
    workload: str
    users: int = 0
    rate: float | None = None
    duration: float | None = None
    step: str = ""

    @property
    def target_key(self) -> tuple[int, int, str]:
        """Points with the same key run against the same started target."""
        return (self.repeat, self.workers, self.policy)

    def label(self) -> str:
        level = f" · {self.rate:g} req/s" if self.rate is not None else ""
        level = f" · {self.users} users" if self.users and not level else level
        return (
            f"{self.workload}{level} · {self.policy} · {self.workers} workers · "
            f"repeat {self.repeat + 1}"
        )


def load_levels(load: Load) -> list[tuple[int, float | None]]:
    """The sweep's load levels as (users, rate), in the order written: one per listed users
    count or rate, else the single level."""
    if load.users_levels:
        return [(users, load.rate) for users in load.users_levels]
    if load.rate_levels:
        return [(load.users, rate) for rate in load.rate_levels]
    return [(load.users, load.rate)]


def open_users(rate: float, latency_ms: float | None, floor: int = 1) -> int:
    """Users the open model needs to keep ``rate`` arrivals in flight while each takes up to
    twice the SLO's latency (late arrivals are counted, not hidden): ⌈rate × 2 × SLO⌉, at least
    ``floor``; without a latency bound, ``floor``."""
    if latency_ms is None:
        return floor
    return max(floor, math.ceil(rate * 2 * latency_ms / 1000))


def point_load(scenario: Scenario, point: Point) -> Load:
    """The load one point runs: the scenario's, at the point's users, rate and duration (a rate
    means the open model)."""
    load = scenario.load
    return replace(
        load,
        users=point.users or load.users,
        rate=point.rate if point.rate is not None else load.rate,
        model="open" if point.rate is not None else load.model,
        duration=point.duration if point.duration is not None else load.duration,
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
    levels = load_levels(scenario.load) if scenario.load.sweeps else [(0, None)]
    latency = scenario.slo.latency_ms if scenario.slo else None
    points: list[Point] = []
    for repeat, (workers, label), policy, workload, (users, rate) in itertools.product(
        range(scenario.sweep.repeats), worker_counts, policies, scenario.workloads, levels
    ):
        if rate is not None and scenario.load.rate_levels:
            users = open_users(rate, latency, users)
        point = Point(len(points), repeat, workers, label, policy, workload.name, users, rate)
        points.append(point)
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
    probes = scenario.search.max_probes if scenario.search else 1
    # load.rate = "75%": one capacity probe (its own target) per workload × worker count first
    cases = len({(p.workload, p.workers) for p in points}) if scenario.load.rate_share else 0
    return (per_point * len(points) * probes + per_target * len(targets)) + (
        (per_point + per_target) * cases
    )


def default_out_dir(scenario: Scenario, root: Path = Path("reports")) -> Path:
    """Where a run writes when neither --out nor report.out says: reports/<name>-<time>."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return root / f"{scenario.name}-{stamp}"
