"""Observing one point: load the running target, sample every process meanwhile, inject the
point's faults, and keep everything seen as an ``Observation``. The side effects of a point
live here; turning an observation into table rows is ``rows.point_rows``, a pure function.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from clusterlab.lab.config.plan import Point, point_load
from clusterlab.lab.config.scenario import CLIENT_KEYED, Scenario
from clusterlab.lab.protocol import Event, FaultCommand
from clusterlab.lab.running import phases
from clusterlab.lab.running.cpus import CpuPlan
from clusterlab.lab.running.faults import FaultInjector, PlannedFault, schedule
from clusterlab.lab.running.load import (
    LoadError,
    LoadOutcome,
    LoadRun,
    read_load,
    start_load,
    stop_load,
    wait_load,
)
from clusterlab.lab.running.sampler import Sampler
from clusterlab.lab.running.targets import ClusterTarget, TargetError, TargetHandle, UrlTarget

Snapshot = dict[str, dict[str, Any]]


@dataclass(frozen=True)
class SkippedFault:
    """A planned fault the runner could not send, why, and when it gave up on it."""

    planned: PlannedFault
    reason: str
    at: float


@dataclass(frozen=True)
class Observation:
    """What one point's load left behind, before any row is built.

    ``before``/``after``: the workers' cumulative counts asked for around the load; ``reports``:
    the counts the workers sent meanwhile; ``rr_before``/``rr_after``: the primary's hand-off
    counters (None unless rr); ``outcome``: locust's measurements (None when the load failed,
    then ``error`` says why); ``samples``: psutil's CPU and memory samples of every process.
    """

    point: Point
    processes: int
    engine: str
    started: float
    load_started: float
    load_pids: list[tuple[int, str]]
    before: Snapshot
    after: Snapshot = field(default_factory=dict)
    reports: list[dict[str, Any]] = field(default_factory=list)
    rr_before: dict[str, int] | None = None
    rr_after: dict[str, int] | None = None
    samples: pd.DataFrame = field(default_factory=pd.DataFrame)
    outcome: LoadOutcome | None = None
    error: str = ""
    skipped: list[SkippedFault] = field(default_factory=list)
    #: the CPUs of the target's own host when it runs on another one (None: on this machine)
    target_host_cpus: int | None = None


def observe_point(
    scenario: Scenario,
    point: Point,
    target: TargetHandle,
    processes: int,
    out: Path,
    cpus: CpuPlan,
    engine: str = "locust",
) -> Observation:
    """Load the running target with the point's workload, sampling and injecting faults."""
    started = time.time()
    with phases.timed("counts", point.index):
        before, supervised_before = target.snapshot(), target.supervision()
    load_started = time.time()  # before wrk's warm-up run, which start_load runs
    launched = time.monotonic()
    try:
        run = _start_load(scenario, point, target.url, processes, out, cpus, engine)
    except LoadError as exc:  # the load never started (wrk's warm-up failed, say)
        return Observation(
            point, processes, engine, started, load_started, [], before, error=str(exc)
        )
    processes, roles = _roles(engine, processes, scenario)
    skipped: list[SkippedFault] = []
    injector = _injector(scenario, point, target, out, skipped)
    outcome, error = None, ""
    try:
        with _sampler(target, run) as sampler, injector:
            wait_load(run)
        stop_load(run)
        _load_phases(run, point.index, launched)
        with phases.timed("collect", point.index):
            outcome = read_load(run.out_dir, run.engine, scenario.load.connection)
            outcome.latency.to_csv(out / "latency.csv", index=False)
    except LoadError as exc:
        error = str(exc)
    finally:
        stop_load(run)
    with phases.timed("collect", point.index):
        after, supervised = (target.snapshot(), target.supervision()) if outcome else ({}, None)
    return Observation(
        point=point,
        processes=processes,
        engine=engine,
        started=started,
        load_started=load_started,
        load_pids=[(p.pid, role) for p, role in zip(run.processes, roles, strict=True)],
        before=before,
        after=after,
        reports=[e for e in target.events() if e["event"] == Event.COUNTS and e["t"] >= started],
        rr_before=supervised_before.get("rr"),
        rr_after=supervised.get("rr") if supervised else None,
        samples=sampler.frame(),
        outcome=outcome,
        error=error,
        skipped=skipped,
        target_host_cpus=target.host_cpus() if isinstance(target, UrlTarget) else None,
    )


def _load_phases(run: LoadRun, point: int, launched: float) -> None:
    """The load's phases from locust's own marks (same clock): its start, warm-up, window, and
    the drain to its processes reaped; wrk's warm-up run and measured run as warm-up and
    window."""
    ended = time.monotonic()
    marks = run.marks()
    keys = ("start_monotonic", "measure_start_monotonic", "stop_monotonic")
    if not all(k in marks for k in keys):
        phases.add("warm-up", launched, run.launched, point)
        phases.add("window", run.launched, ended, point)
        return
    start, measure, stop = (marks[k] for k in keys)
    for name, begin, end in (
        ("locust start", launched, start),
        ("warm-up", start, measure),
        ("window", measure, stop),
        ("drain", stop, ended),
    ):
        phases.add(name, begin, end, point)


def _start_load(
    scenario: Scenario,
    point: Point,
    url: str,
    processes: int,
    out: Path,
    cpus: CpuPlan,
    engine: str,
) -> LoadRun:
    """The point's load: with faults every failure counts; with hash in the sweep each locust
    user connects from its own address (for every policy alike)."""
    return start_load(
        point_load(scenario, point),
        next(w for w in scenario.workloads if w.name == point.workload),
        url,
        processes,
        out,
        scenario.target.worker_header,
        count_every_failure=bool(scenario.faults),
        cpus=None if cpus.shared else cpus.load,
        engine=engine,
        spread_sources=any(p in CLIENT_KEYED for p in scenario.sweep.policies),
        allowed=scenario.network.allow,
        remote=scenario.remote,
    )


def _roles(engine: str, processes: int, scenario: Scenario) -> tuple[int, list[str]]:
    """The load's process count and each one's role, as events.csv names them (with remote
    workers, the master is the only process started here)."""
    if scenario.remote is not None:
        return scenario.remote.workers, ["locust master"]
    if engine == "wrk":
        return 1, ["wrk"]
    if processes == 1:
        return 1, ["locust"]
    return processes, ["locust master"] + ["locust worker"] * processes


def _injector(
    scenario: Scenario,
    point: Point,
    target: TargetHandle,
    out: Path,
    skipped: list[SkippedFault],
) -> FaultInjector:
    """The point's faults, each sent at its time (those it cannot send go to ``skipped``)."""
    plan = schedule(scenario.faults, scenario.load.duration, point.repeat, point.workload)
    return FaultInjector(
        plan,
        _fault_sender(target),
        out,
        lambda planned, why: skipped.append(SkippedFault(planned, why, time.time())),
    )


def _sources(target: TargetHandle) -> dict[tuple[str, str], int]:
    """The target's processes (and the runner's own) by (role, key), for the sampler."""
    found = {("worker", k): pid for k, pid in target.worker_pids().items()}
    found[("runner", "0")] = os.getpid()
    if target.primary_pid is not None:
        found[("primary", "0")] = target.primary_pid
    return found


def _sampler(target: TargetHandle, run: LoadRun) -> Sampler:
    """The target's processes and the load's, sampled; a url target's CPU from its metrics
    endpoint when psutil cannot see its processes."""
    reported = (
        target.reported_cpu if isinstance(target, UrlTarget) and target.reports_cpu() else None
    )
    return Sampler(lambda: {**_sources(target), **run.pids()}, reported=reported)


def _fault_sender(target: TargetHandle) -> Callable[[FaultCommand], None]:
    if isinstance(target, ClusterTarget):
        return target.inject

    def refuse(command: FaultCommand) -> None:
        raise TargetError("this target takes no faults (it is not a cluster the lab started)")

    return refuse
