"""The runner: walk the plan, and for each point start the target, load it with locust while
sampling (and injecting the scenario's faults), collect the counts, and append rows to the
tables; then build the report.

Every process a run starts is stopped by the run, on success, on failure and on Ctrl-C; finished
points are kept and an interrupted run's report says it is partial.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from clusterlab import available_parallelism
from clusterlab.lab.analysis.metrics import fairness_columns
from clusterlab.lab.analysis.tables import RunTables
from clusterlab.lab.config.plan import (
    Point,
    build_plan,
    estimate_seconds,
    group_by_target,
    load_processes,
)
from clusterlab.lab.config.scenario import Scenario
from clusterlab.lab.running import rows as collect
from clusterlab.lab.running.faults import FaultInjector, PlannedFault, schedule
from clusterlab.lab.running.load import LoadError, read_load, start_load, stop_load, wait_load
from clusterlab.lab.running.machine import machine_facts
from clusterlab.lab.running.sampler import Sampler, window_usage
from clusterlab.lab.running.targets import (
    ClusterTarget,
    TargetConfig,
    TargetError,
    TargetHandle,
    free_port,
    start_target,
)

SCHEMA_VERSION = 1


class Progress(Protocol):
    def started(self, total: int, estimate_s: float, out_dir: Path) -> None: ...
    def point_started(self, point: Point, total: int) -> None: ...
    def point_finished(self, point: Point, total: int, row: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class RunOutcome:
    out_dir: Path
    points: int
    failed: int
    interrupted: bool


def default_out_dir(scenario: Scenario, root: Path = Path("reports")) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return root / f"{scenario.name}-{stamp}"


def run_scenario(scenario: Scenario, out_dir: Path, progress: Progress) -> RunOutcome:
    """Measure every point of the scenario into ``out_dir`` (created; must not hold a run)."""
    parallelism = available_parallelism()
    points = build_plan(scenario, parallelism)
    out_dir.mkdir(parents=True, exist_ok=False)
    (out_dir / "raw").mkdir()
    tables = RunTables(out_dir)
    meta: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "scenario": scenario.to_dict(),
        "machine": machine_facts(),
        "planned_points": len(points),
        "started": time.time(),
        "finished": None,
        "partial": True,
        "interrupted": False,
    }
    tables.write_meta(meta)
    progress.started(len(points), estimate_seconds(scenario, points), out_dir)
    failed = 0
    done = 0
    interrupted = False
    try:
        for group in group_by_target(points, fresh=bool(scenario.faults)):
            failed += _run_group(scenario, group, len(points), parallelism, tables, progress)
            done += len(group)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        meta.update(finished=time.time(), partial=done < len(points), interrupted=interrupted)
        tables.write()
        tables.write_meta(meta)
    return RunOutcome(out_dir, len(points), failed, interrupted)


def _run_group(
    scenario: Scenario,
    group: list[Point],
    total: int,
    parallelism: int,
    tables: RunTables,
    progress: Progress,
) -> int:
    """Start one target for consecutive points that share it; return how many points failed."""
    first = group[0]
    raw = tables.directory / "raw" / f"target-{first.index:03d}"
    raw.mkdir()
    config = TargetConfig(
        scenario.target,
        first.workers,
        first.policy,
        raw / "target.log",
        respawn=scenario.respawn,
        port=free_port() if scenario.faults else 0,
    )
    target: TargetHandle | None = None
    rows: list[dict[str, Any]] = []
    failed = recorded = 0
    try:
        progress.point_started(first, total)
        target = start_target(config)
        if target.primary_pid is not None:
            tables.add(
                "events", [_started_row(first, "target", target.primary_pid, config.target.kind)]
            )
        for point in group:
            if point is not first:
                progress.point_started(point, total)
            row = _measure(scenario, point, target, parallelism, tables)
            rows.append(row)
            progress.point_finished(point, total, row)
            failed += row["status"] != "ok"
            recorded += 1
    except TargetError as exc:
        for point in group[recorded:]:
            row = _failed_row(scenario, point, str(exc))
            tables.add("results", [row])
            progress.point_finished(point, total, row)
            failed += 1
    finally:
        if target is not None:
            target.stop()
            events = target.events()
            tables.add("events", _event_rows(group, rows, events))
            (raw / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
        tables.write()
    return failed


def _keys(point: Point) -> dict[str, Any]:
    return {
        "point": point.index,
        "repeat": point.repeat,
        "workload": point.workload,
        "policy": point.policy,
        "workers": point.workers,
    }


def _measure(
    scenario: Scenario, point: Point, target: TargetHandle, parallelism: int, tables: RunTables
) -> dict[str, Any]:
    """Load the running target with one workload and record what happened."""
    keys = _keys(point)
    workload = next(w for w in scenario.workloads if w.name == point.workload)
    processes = load_processes(scenario.load, point.workers, parallelism)
    out = tables.directory / "raw" / f"point-{point.index:03d}"
    started = time.time()
    before = target.snapshot()
    supervised_before = target.supervision()
    run = start_load(
        scenario.load,
        workload,
        target.url,
        processes,
        out,
        scenario.target.worker_header,
        count_every_failure=bool(scenario.faults),
    )
    roles = ["locust"] if processes == 1 else ["locust master"] + ["locust worker"] * processes
    tables.add(
        "events",
        [
            _started_row(point, "load", p.pid, role)
            for p, role in zip(run.processes, roles, strict=True)
        ],
    )

    def sources() -> dict[tuple[str, str], int]:
        found = {("worker", k): pid for k, pid in target.worker_pids().items()}
        found[("runner", "0")] = os.getpid()
        if target.primary_pid is not None:
            found[("primary", "0")] = target.primary_pid
        return {**found, **run.pids()}

    skipped: list[tuple[PlannedFault, str, float]] = []
    plan = schedule(scenario.faults, scenario.load.duration, point.repeat)
    send = target.inject if isinstance(target, ClusterTarget) else _no_faults
    injector = FaultInjector(plan, send, out, lambda f, why: skipped.append((f, why, time.time())))
    try:
        with Sampler(sources) as sampler, injector:
            wait_load(run)
        outcome = read_load(out)
    except LoadError as exc:
        row = _failed_row(scenario, point, str(exc))
        tables.add("results", [row])
        return row
    finally:
        stop_load(run)
        tables.add("events", [_skipped_row(point, *item) for item in skipped])
    after = target.snapshot()
    supervised_after = target.supervision()
    reports = [e for e in target.events() if e["event"] == "counts" and e["t"] >= started]
    samples = sampler.frame()
    usage = window_usage(samples, outcome.measure_start, outcome.measure_end)
    workers = collect.worker_rows(keys, before, reports, after, outcome, usage)
    source = "channel" if before else ("header" if outcome.tally else "none")
    row = {
        **collect.result_row(
            keys, outcome, workers, usage, source, scenario.load.generator_bound_cpu
        ),
        "status": "ok",
        "error": "",
        "started": started,
        "measure_start": outcome.measure_start,
        "users": scenario.load.users,
        "processes": processes,
        **_handoffs(supervised_before.get("rr"), supervised_after.get("rr")),
    }
    row.update(fairness_columns(workers))
    tables.add("results", [row])
    tables.add("workers", workers)
    tables.add("failures", collect.failure_rows(keys, outcome))
    tables.add("timeseries", collect.timeseries_rows(keys, outcome, reports, samples))
    return row


def _no_faults(command: dict[str, Any]) -> None:
    raise TargetError("this target takes no faults (it is not a cluster the lab started)")


def _handoffs(before: dict[str, int] | None, after: dict[str, int] | None) -> dict[str, float]:
    """The point's round-robin hand-offs: accepted, handed, requeued (given back by a worker
    that left and handed on) and dropped (closed unserved: queued connections lost)."""
    names = ("accepted", "handed", "requeued", "dropped")
    if before is None or after is None:
        return {f"rr_{n}": math.nan for n in names}
    return {f"rr_{n}": float(after[n] - before[n]) for n in names}


def _skipped_row(point: Point, planned: PlannedFault, reason: str, at: float) -> dict[str, Any]:
    """A planned fault the runner could not send (the primary reports the ones it skips); its
    ``t`` is when it was due."""
    return {
        **_keys(point),
        "time": at,
        "t": planned.offset,
        "event": "fault_skipped",
        "kind": planned.fault.kind,
        "detail": json.dumps({"id": planned.id, "offset": planned.offset, "reason": reason}),
    }


def _failed_row(scenario: Scenario, point: Point, error: str) -> dict[str, Any]:
    return {
        **_keys(point),
        "status": "failed",
        "error": error,
        "started": time.time(),
        "users": scenario.load.users,
        "generator_bound": False,
        "bound_reason": "",
        "rps": math.nan,
    }


def _started_row(point: Point, event: str, pid: int, detail: str) -> dict[str, Any]:
    """A process the run started (every one of them is stopped by the run)."""
    return {
        **_keys(point),
        "time": time.time(),
        "event": event,
        "worker": None,
        "pid": pid,
        "detail": detail,
    }


_COLUMN_FIELDS = ("event", "t", "worker", "pid", "slot", "kind", "code", "signal")
_ANSWERS = ("counts", "snapshot", "supervision")


def _event_rows(
    group: list[Point], rows: list[dict[str, Any]], events: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The target's events as events.csv rows, each given to the point whose load had started
    by then (the first point before any load), with ``t`` from that point's measured window."""
    starts = {row["point"]: row for row in rows if row.get("status") == "ok"}
    out = []
    for event in events:
        if event["event"] in _ANSWERS:
            continue
        owner = group[0]
        for point in group:
            row = starts.get(point.index)
            if row is not None and row["started"] <= event["t"]:
                owner = point
        origin = starts.get(owner.index, {}).get("measure_start", math.nan)
        detail = {k: v for k, v in event.items() if k not in _COLUMN_FIELDS}
        out.append(
            {
                **_keys(owner),
                "time": event["t"],
                "t": round(event["t"] - origin, 4),
                **{k: event.get(k) for k in _COLUMN_FIELDS[3:]},
                "worker": None if event.get("worker") is None else str(event["worker"]),
                "event": event["event"],
                "detail": json.dumps(detail) if detail else "",
            }
        )
    return out
