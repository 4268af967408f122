"""A run's analysis: every derived number computed once from the raw tables, frozen, and read by
every output (summary.json, report.md, report.html, plots, gates, the pytest plugin).

``analyze(load_results(DIR))`` is the one place where fairness, verdicts, aggregates over
repeats, USL fits and recovery metrics are computed. ``compare`` reads summary.json, this
object's serialized form, because baselines outlive the tables they came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from clusterlab.lab.analysis import recovery
from clusterlab.lab.analysis.capacity import (
    CapacityFindings,
    busiest_levels,
    find_capacity,
    little_flag,
)
from clusterlab.lab.analysis.metrics import aggregate, fairness_columns, usl_fits
from clusterlab.lab.analysis.policies import policy_summary
from clusterlab.lab.analysis.summary import clean, summary_dict
from clusterlab.lab.analysis.tables import Results
from clusterlab.lab.analysis.verdicts import Verdict, point_verdict

#: A percentile with fewer samples beyond it than this is marked low-confidence.
MIN_TAIL_SAMPLES = 10
LOW_CONFIDENCE = {"p99": 0.99, "p999": 0.999}


@dataclass(frozen=True)
class Analysis:
    """What a run measured and what follows from it.

    ``points`` is results.csv with the derived columns added (fairness over workers, the
    generator-bound verdict, the load level and Little's law); ``aggregates`` one row per workload × policy × workers over the
    repeats; ``fits`` the USL fit per workload × policy; ``faults`` and ``recovery`` the
    recovery metrics per fault and per point; ``capacity`` the SLO's answers, knees, efficiency,
    USL intervals and the recommendation; ``summary`` the content of summary.json (less
    the list of plots, which the output step adds once it has drawn them).
    """

    run: Results
    points: pd.DataFrame
    aggregates: pd.DataFrame
    fits: pd.DataFrame
    faults: pd.DataFrame
    recovery: pd.DataFrame
    summary: dict[str, Any] = field(repr=False)
    capacity: CapacityFindings | None = field(default=None, repr=False)

    @property
    def directory(self) -> Path:
        return self.run.directory

    @property
    def meta(self) -> dict[str, Any]:
        return self.run.meta

    @property
    def scenario(self) -> dict[str, Any]:
        scenario: dict[str, Any] = self.run.meta["scenario"]
        return scenario

    @property
    def parallelism(self) -> int:
        return int(self.run.meta["machine"]["available_parallelism"])

    @property
    def measured(self) -> pd.DataFrame:
        """The points that finished (status ok)."""
        return self.points[self.points["status"] == "ok"] if not self.points.empty else self.points


def analyze(run: Results) -> Analysis:
    """Compute everything the outputs need from one run's tables."""
    points = derive_point_columns(run)
    aggregates = aggregate(points) if not points.empty else pd.DataFrame()
    # with load levels, a worker count's capacity is its busiest level (not a fit per level)
    fits = usl_fits(busiest_levels(points)) if not points.empty else pd.DataFrame()
    per_fault = recovery.faults(run.events, run.timeseries, points)
    per_point = recovery.points(run.events, per_fault, points)
    capacity = find_capacity(points, aggregates, run.meta["scenario"], target_cpus(run.meta))
    summary = summary_dict(run, points, aggregates, fits, per_fault, per_point)
    summary["capacity"] = clean(capacity.to_dict())
    summary.update(clean(policy_summary(points, run.meta)))
    return Analysis(run, points, aggregates, fits, per_fault, per_point, summary, capacity)


def target_cpus(meta: dict[str, Any]) -> int:
    """The CPUs the target could use: its own set when placed apart, else the machine's."""
    placed = (meta.get("cpus") or {}).get("target")
    return len(placed) if placed else int(meta["machine"]["available_parallelism"])


def load_levels(points: pd.DataFrame, load: dict[str, Any]) -> pd.DataFrame:
    """``mix`` (the workload as written), ``level`` (the point's users in a users sweep, its
    offered rate in a rate sweep or a search, else NaN) and, at a level, ``workload`` named
    after it ("cpu @ 400 req/s"), so that every group is one workload at one load level."""
    points["mix"] = points["workload"]
    by_users = bool(load.get("users_levels"))
    swept = by_users or bool(load.get("rate_levels")) or points["search_step"].notna().any()
    if not swept:
        points["level"] = float("nan")
        return points
    points["level"] = (points["users"] if by_users else points["offered_rps"]).astype(float)
    names = []
    for mix, level, step in zip(points["mix"], points["level"], points["search_step"], strict=True):
        unit = "users" if by_users else "req/s"
        name = f"{mix} @ {level:.0f} {unit}" if level >= 10 else f"{mix} @ {level:g} {unit}"
        names.append(name + (" (confirm)" if step == "confirm" else ""))
    points["workload"] = names
    return points


def derive_point_columns(run: Results) -> pd.DataFrame:
    """results.csv plus fairness (from workers.csv, the workers' own counts) and the verdict
    (from the CPU each side used; ``generator_bound`` and ``bound_reason`` kept for readers
    of the generator-bound flag)."""
    points = run.results.copy()
    if points.empty:
        return points.assign(
            verdict="",
            verdict_reason="",
            generator_bound=pd.Series(dtype=bool),
            bound_reason="",
            mix="",
            level=float("nan"),
            little_flag="",
        )
    points = load_levels(points, run.meta["scenario"]["load"])
    busiest = run.workers.groupby(["point", "repeat"])["cpu_pct"].max()
    points["busiest_worker_cpu_pct"] = [
        busiest.get((p, r), float("nan"))
        for p, r in zip(points["point"], points["repeat"], strict=True)
    ]
    limit = float(run.meta["scenario"]["load"]["generator_bound_cpu"])
    cpus = int(run.meta["machine"].get("cpu_count") or 1)
    verdicts = [point_verdict(row, limit, cpus) for row in points.to_dict("records")]
    points["verdict"] = [str(v) if v is not None else "" for v, _ in verdicts]
    points["verdict_reason"] = [reason for _, reason in verdicts]
    points["generator_bound"] = points["verdict"] == Verdict.GENERATOR
    samples = points["latency_samples"].fillna(points["requests"])
    for name, quantile in LOW_CONFIDENCE.items():
        points[f"low_confidence_{name}"] = samples * (1 - quantile) < MIN_TAIL_SAMPLES
    points["bound_reason"] = points["verdict_reason"].where(points["generator_bound"], "")
    wait = float(run.meta["scenario"]["load"].get("wait") or 0.0)
    points["little_flag"] = [little_flag(row, wait) for row in points.to_dict("records")]
    fairness = {
        (point, repeat): fairness_columns(group.to_dict("records"))
        for (point, repeat), group in run.workers.groupby(["point", "repeat"])
    }
    for column in fairness_columns([]):
        points[column] = [
            fairness.get((p, r), {}).get(column, float("nan"))
            for p, r in zip(points["point"], points["repeat"], strict=True)
        ]
    return points
