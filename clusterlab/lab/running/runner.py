"""The runner: walk the plan, and for each group of points start the target, observe each point
(``observe``), append its rows (``rows``) to the raw tables, and stop the target.

Every process a run starts is stopped by the run, on success, on failure and on Ctrl-C; finished
points are kept and an interrupted run's meta.json says it is partial.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from clusterlab.lab.analysis.tables import RunTables
from clusterlab.lab.config.plan import (
    Point,
    build_plan,
    estimate_seconds,
    group_by_target,
    load_processes,
)
from clusterlab.lab.config.scenario import Scenario
from clusterlab.lab.protocol import Event
from clusterlab.lab.running import phases
from clusterlab.lab.running.cpus import CpuPlan
from clusterlab.lab.running.machine import machine_facts
from clusterlab.lab.running.observe import observe_point
from clusterlab.lab.running.processes import free_port
from clusterlab.lab.running.rows import (
    failed_row,
    point_rows,
    started_row,
    target_event_rows,
)
from clusterlab.lab.running.targets import (
    ClusterTarget,
    TargetConfig,
    TargetError,
    TargetHandle,
    start_target,
)
from clusterlab.lab.running.wrk import choose_engine

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
    #: Why points failed: (the points' numbers, 1-based, the reason), one entry per reason.
    failures: tuple[tuple[tuple[int, ...], str], ...] = ()


def run_scenario(
    scenario: Scenario, out_dir: Path, progress: Progress, cpus: CpuPlan
) -> RunOutcome:
    """Measure every point of the scenario into ``out_dir`` (created; must not hold a run),
    the load and the target on the CPUs ``cpus`` gives them."""
    points = build_plan(scenario, cpus.target_parallelism)
    out_dir.mkdir(parents=True, exist_ok=False)
    (out_dir / "raw").mkdir()
    tables = RunTables(out_dir)
    meta: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "scenario": scenario.to_dict(),
        "machine": machine_facts(),
        "cpus": cpus.to_dict(),
        "load": dict(zip(("engine", "why"), choose_engine(scenario), strict=True)),
        "planned_points": len(points),
        "started": time.time(),
        "finished": None,
        "partial": True,
        "interrupted": False,
    }
    tables.write_meta(meta)
    # search mode: at most max_probes per planned point, as many as the search takes
    total = len(points) * (scenario.search.max_probes if scenario.search else 1)
    progress.started(total, estimate_seconds(scenario, points), out_dir)
    failed: dict[str, list[int]] = {}
    done, interrupted, stopper = 0, False, TargetStopper()
    try:
        todo = points
        if scenario.load.rate_share is not None:  # rate = "75%": each case's capacity first
            from clusterlab.lab.running import capacity_probe

            todo, probes, failed = capacity_probe.pace_points(
                scenario, points, cpus, tables, progress
            )
            meta["capacity_probes"] = capacity_probe.probe_records(probes)
            done = len(points) - len(todo)
        indexes = itertools.count()
        for group in group_by_target(todo, fresh=bool(scenario.faults)):
            run = group_run(scenario, group, total, cpus, tables, progress, indexes)
            for row in run.measure(stopper):
                if row["status"] != "ok":
                    failed.setdefault(str(row["error"]), []).append(int(row["point"]) + 1)
            done += len(group)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        stopper.join()
        measured = len(tables.rows["results"])
        planned = max(len(points), measured) if scenario.search else len(points)
        meta.update(
            finished=time.time(),
            partial=done < len(points),
            interrupted=interrupted,
            planned_points=planned,
        )
        tables.write()
        tables.write_meta(meta)
    failures = tuple((tuple(numbers), error) for error, numbers in failed.items())
    return RunOutcome(out_dir, len(points), sum(map(len, failed.values())), interrupted, failures)


@dataclass
class _GroupRun:
    """Consecutive points that share one started target."""

    scenario: Scenario
    group: list[Point]
    total: int
    cpus: CpuPlan
    tables: RunTables
    progress: Progress

    def measure(self, stopper: TargetStopper | None = None) -> list[dict[str, Any]]:
        """Start the target, observe every point, stop it; return the points' results rows.
        With a ``stopper``, the lab's own target is stopped on its thread while the next group's
        target starts."""
        first = self.group[0]
        raw = self.tables.directory / "raw" / f"target-{first.index:03d}"
        raw.mkdir()
        config = TargetConfig(
            self.scenario.target,
            first.workers,
            first.policy,
            raw / "target.log",
            respawn=self.scenario.respawn,
            port=free_port() if self.scenario.faults else 0,
            cpus=None if self.cpus.shared else self.cpus.target,
        )
        target: TargetHandle | None = None
        results: list[dict[str, Any]] = []
        try:
            self.progress.point_started(first, self.total)
            with phases.timed("target start"):
                target = start_target(config)
            if stopper is not None:
                stopper.join()  # the previous target is gone before this one is loaded
            if target.primary_pid is not None:
                kind = config.target.kind
                started = started_row(first, Event.TARGET_STARTED, target.primary_pid, kind)
                self.tables.add("events", [started])
            self._measure_points(target, first, results)
        except TargetError as exc:
            for point in self.group[len(results) :]:
                results.append(self._record_failure(point, str(exc)))
        finally:
            if stopper is not None and target is None:
                stopper.join()
            if target is not None:
                stopped = partial(self._record_stop, target, raw, results)
                if stopper is not None and isinstance(target, ClusterTarget):
                    stopper.stop(target, stopped)
                else:
                    _stop(target)
                    stopped()
            self.tables.write()
        return results

    def _record_stop(self, target: TargetHandle, raw: Path, results: list[dict[str, Any]]) -> None:
        events = target.events()
        self.tables.add("events", target_event_rows(self.group, results, events))
        (raw / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))

    def _measure_points(
        self, target: TargetHandle, first: Point, results: list[dict[str, Any]]
    ) -> None:
        """Observe the group's points in order (the search overrides this: it picks each probe
        from the ones before, adding it to ``group``)."""
        for point in self.group:
            results.append(self._point(point, target, first))

    def _point(self, point: Point, target: TargetHandle, first: Point) -> dict[str, Any]:
        if point is not first:
            self.progress.point_started(point, self.total)
        cpus = self.cpus
        load_cpus = None if cpus.shared else len(cpus.load)
        processes = load_processes(
            self.scenario.load, point.workers, cpus.target_parallelism, load_cpus
        )
        out = self.tables.directory / "raw" / f"point-{point.index:03d}"
        engine, _ = choose_engine(self.scenario)
        seen = observe_point(self.scenario, point, target, processes, out, cpus, engine)
        rows = point_rows(self.scenario, seen, cpus)
        for table, found in (
            ("results", [rows.result]),
            ("workers", rows.workers),
            ("failures", rows.failures),
            ("timeseries", rows.timeseries),
            ("events", rows.events),
        ):
            self.tables.add(table, found)
        self.progress.point_finished(point, self.total, rows.result)
        return rows.result

    def _record_failure(self, point: Point, error: str) -> dict[str, Any]:
        row = failed_row(self.scenario, point, error)
        self.tables.add("results", [row])
        self.progress.point_finished(point, self.total, row)
        return row


def _stop(target: TargetHandle) -> None:
    with phases.timed("target stop"):
        target.stop()


class TargetStopper:
    """Stops a group's target on a thread of its own while the next group's target starts;
    ``join`` waits for it and records its events (on the caller's thread), before any load."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._stopped: Callable[[], None] | None = None

    def stop(self, target: TargetHandle, stopped: Callable[[], None]) -> None:
        self.join()
        self._thread = threading.Thread(target=_stop, args=(target,), name="target-stop")
        self._stopped = stopped
        self._thread.start()

    def join(self) -> None:
        thread, stopped = self._thread, self._stopped
        self._thread = self._stopped = None
        if thread is not None and stopped is not None:
            thread.join()
            stopped()


def group_run(
    scenario: Scenario,
    group: list[Point],
    total: int,
    cpus: CpuPlan,
    tables: RunTables,
    progress: Progress,
    numbers: Iterator[int],
) -> _GroupRun:
    """The run of one target's points: as planned, or (search mode) the search's probes,
    numbered from ``numbers``."""
    if scenario.search is None:
        return _GroupRun(scenario, group, total, cpus, tables, progress)
    from clusterlab.lab.running.search import SearchRun

    return SearchRun(scenario, group, total, cpus, tables, progress, numbers)
