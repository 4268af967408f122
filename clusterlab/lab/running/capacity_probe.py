"""``load.rate = "75%"``: an open-model rate relative to the capacity measured in the same run.

Before the first point, the lab probes each case (workload × worker count) once: a closed-model
load of ``load.users`` users with no think time, the scenario's warm-up, window and connection
mode, the sweep's first policy, no faults (the capacity of the healthy target: a fault is what
the policies are compared under, not part of the reference). Its capacity is the requests
completed inside the measured window per second (the HDR histogram's count, which holds only
answers inside the window), and its verdict says whether the
target was what limited it. Every point of the case then runs at share × capacity, the same rate
for every policy and repeat. The probes' rows are kept in ``capacity/`` of the run directory
(raw tables like the run's own) and in meta.json as ``capacity_probes``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from clusterlab.lab.analysis.tables import RunTables
from clusterlab.lab.analysis.verdicts import point_verdict
from clusterlab.lab.config.plan import Point
from clusterlab.lab.config.scenario import Scenario
from clusterlab.lab.running.cpus import CpuPlan
from clusterlab.lab.running.rows import failed_row
from clusterlab.lab.running.runner import _GroupRun

#: The folder of the run directory that holds the probes' own tables.
PROBE_DIR = "capacity"


@dataclass(frozen=True)
class CapacityProbe:
    """One case's probe: its capacity (req/s completed in the window), what limited it, and
    the rate its points ran at (``share`` × capacity); ``error`` when it did not finish."""

    workload: str
    workers: int
    policy: str
    users: int
    share: float
    capacity_rps: float
    rate: float
    verdict: str
    why: str
    error: str = ""

    def line(self) -> str:
        """The probe in one line, as printed before the points."""
        case = f"capacity probe {self.workload} · {self.policy} · {self.workers} workers"
        if self.error:
            return f"{case}: FAILED: {self.error}"
        return (
            f"{case}: {self.capacity_rps:.0f} req/s [{self.verdict}] (closed model, "
            f"{self.users} users) → rate {self.rate:.0f} req/s ({100 * self.share:g}%)"
        )


def probe_scenario(scenario: Scenario) -> Scenario:
    """The scenario a probe runs: closed model, no think time, no rate, no faults, and the
    points' engine (locust: the open model's; wrk would take less of a shared machine than the
    points' load will, and measure more than they can get)."""
    load = replace(
        scenario.load,
        model="closed",
        rate=None,
        rate_share=None,
        wait=0.0,
        rate_levels=(),
        engine="locust",
    )
    return replace(scenario, load=load, faults=(), search=None)


def capacity_of(row: dict[str, Any]) -> float:
    """Successful requests completed inside the measured window, per second: the histogram's
    count (``latency_samples``) less the failures; locust's ``rps`` when there is none (or it
    is not a part of locust's request count)."""
    window = float(row.get("window_s") or math.nan)
    samples = float(row.get("latency_samples") or math.nan)
    requests = float(row.get("requests") or math.nan)
    if math.isnan(samples) or not window > 0 or not samples <= requests:
        return float(row.get("rps") or math.nan)
    return max(0.0, samples - float(row.get("failures") or 0)) / window


def pace_points(
    scenario: Scenario, points: list[Point], cpus: CpuPlan, tables: RunTables, progress: Any
) -> tuple[list[Point], list[CapacityProbe], dict[str, list[int]]]:
    """Probe each case, then give its points share × capacity. Returns the points to run, the
    probes, and the points of cases whose probe failed (recorded as failed rows, by error)."""
    share = scenario.load.rate_share or 1.0
    (tables.directory / PROBE_DIR / "raw").mkdir(parents=True, exist_ok=True)
    own = RunTables(tables.directory / PROBE_DIR)
    cases = list(dict.fromkeys((p.workload, p.workers) for p in points))
    probes = {}
    for number, (workload, workers) in enumerate(cases):
        policy = scenario.sweep.policies[0]
        point = Point(number, 0, workers, str(workers), policy, workload, scenario.load.users)
        probes[(workload, workers)] = found = run_probe(scenario, point, cpus, own)
        _say(progress, found.line())
    paced: list[Point] = []
    failed: dict[str, list[int]] = {}
    for point in points:
        probe = probes[(point.workload, point.workers)]
        if probe.error or not probe.capacity_rps > 0:
            error = f"capacity probe failed: {probe.error or 'no request completed'}"
            tables.add("results", [failed_row(scenario, point, error)])
            failed.setdefault(error, []).append(point.index + 1)
            continue
        paced.append(replace(point, rate=round(share * probe.capacity_rps, 1)))
    tables.write()
    return paced, list(probes.values()), failed


def run_probe(scenario: Scenario, point: Point, cpus: CpuPlan, tables: RunTables) -> CapacityProbe:
    """Start a target for one case (``point``: its workload, workers, the first policy and the
    probe's users), measure it under the closed-model load into ``tables``, stop it."""
    row = _GroupRun(probe_scenario(scenario), [point], 1, cpus, tables, _Silent()).measure()[0]
    share = scenario.load.rate_share or 1.0
    found = CapacityProbe(
        point.workload, point.workers, point.policy, point.users, share, math.nan, math.nan, "", ""
    )
    if row.get("status") != "ok":
        return replace(found, error=str(row.get("error")))
    busiest = [
        w["cpu_pct"]
        for w in tables.rows["workers"]
        if w["point"] == row["point"] and w.get("cpu_pct") is not None
    ]
    row = {**row, "busiest_worker_cpu_pct": max(busiest, default=math.nan)}
    verdict, why = point_verdict(row, scenario.load.generator_bound_cpu, int(row.get("cpus") or 1))
    capacity = capacity_of(row)
    return replace(
        found,
        capacity_rps=capacity,
        rate=round(share * capacity, 1),
        verdict=str(verdict or ""),
        why=why,
    )


def probe_records(probes: list[CapacityProbe]) -> list[dict[str, Any]]:
    """The probes as meta.json keeps them."""
    return [asdict(p) for p in probes]


class _Silent:
    """The probe's own progress: nothing (its line is printed once it is judged)."""

    def started(self, *_: Any) -> None: ...
    def point_started(self, *_: Any) -> None: ...
    def point_finished(self, *_: Any) -> None: ...


def _say(progress: Any, text: str) -> None:
    """A line through the run's progress stream (nothing when it is quiet or has none)."""
    stream = getattr(progress, "stream", None)
    if stream is None or getattr(progress, "quiet", False):
        return
    stream.write(text + "\n")
    stream.flush()
