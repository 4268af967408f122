"""Turn one point's observation (locust's outcome, worker count reports, psutil samples, the
target's events) into rows of the raw tables. Pure functions: no processes, no files.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from clusterlab.lab.config.plan import Point
from clusterlab.lab.config.scenario import Scenario
from clusterlab.lab.protocol import ANSWERS, Event
from clusterlab.lab.running.cpus import CpuPlan
from clusterlab.lab.running.faults import PlannedFault
from clusterlab.lab.running.latency import latency_columns
from clusterlab.lab.running.load import LoadOutcome
from clusterlab.lab.running.observe import Observation
from clusterlab.lab.running.sampler import role_cpu_pct, window_usage

Counts = Mapping[str, Mapping[str, Any]]
OPEN_MODEL_COLUMNS = ("arrivals", "late_arrivals", "p50_sent_ms", "p99_sent_ms")


def count_at(samples: list[tuple[float, float]], at: float) -> float:
    """A cumulative counter's value at time ``at``, interpolated linearly between reports (and
    held flat before the first and after the last)."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    return float(np.interp(at, [t for t, _ in ordered], [v for _, v in ordered]))


def counter_series(
    before: Counts, reports: list[dict[str, Any]], after: Counts, quantity: str
) -> dict[str, list[tuple[float, float]]]:
    """Per worker, the (time, cumulative value) reports of one counter from snapshot to snapshot."""
    series: dict[str, list[tuple[float, float]]] = {}
    for snapshot in (before, after):
        for worker, counts in snapshot.items():
            series.setdefault(worker, []).append((float(counts["t"]), float(counts[quantity])))
    for report in reports:
        series.setdefault(str(report["worker"]), []).append(
            (float(report["sent"]), float(report[quantity]))
        )
    return series


def whole_load(worker: str, before: Counts, after: Counts, outcome: LoadOutcome) -> dict[str, Any]:
    """The point's whole load (warm-up, window, answers after the stop) on one worker, as the
    worker counted it (its counts after the load less before it) and as locust did (answers
    naming it): equal when nothing was lost between them."""
    counted = math.nan
    if worker in before and worker in after:
        counted = float(after[worker]["requests"] - before[worker]["requests"])
    seen = outcome.tally_load.get(worker, 0 if outcome.tally_load else math.nan)
    return {"load_requests_counted": counted, "load_requests_seen": seen}


def worker_rows(
    keys: dict[str, Any],
    before: Counts,
    reports: list[dict[str, Any]],
    after: Counts,
    outcome: LoadOutcome,
    usage: pd.DataFrame,
) -> list[dict[str, Any]]:
    """One row per worker: requests in the measured window (its last count minus its count
    interpolated at the window's start), connections accepted during the whole load (warm-up
    included: keep-alive connections open during warm-up), CPU and RSS."""
    requests = counter_series(before, reports, after, "requests")
    # requests without the worker header ("unknown") belong to no worker
    tallied = {w for w in outcome.tally if w != "unknown"}
    workers = sorted(set(requests) | tallied, key=_worker_order)
    rows = []
    for worker in workers:
        served = requests.get(worker, [])
        # Load stops at measure_end and the last snapshot is taken after locust exited, so the
        # worker's final count is its count at the end; only the start needs interpolating.
        # a whole number: the count at the window's start is interpolated between reports
        start = count_at(served, outcome.measure_start) if served else 0.0
        in_window = float(round(max(served)[1] - start)) if served else 0.0
        connections = math.nan
        if worker in before or worker in after:
            start = before.get(worker, {}).get("connections", 0)
            connections = float(after.get(worker, {}).get("connections", start)) - float(start)
        use = usage[(usage["role"] == "worker") & (usage["key"] == worker)]
        rows.append(
            {
                **keys,
                "worker": worker,
                "pid": int(use["pid"].iloc[0]) if not use.empty else None,
                "requests": in_window if served else float(outcome.tally.get(worker, 0)),
                "connections": connections,
                "requests_seen_by_locust": outcome.tally.get(
                    worker, 0 if outcome.tally else math.nan
                ),
                **whole_load(worker, before, after, outcome),
                "cpu_s": float(use["cpu_s"].iloc[0]) if not use.empty else math.nan,
                "cpu_pct": float(use["cpu_pct"].iloc[0]) if not use.empty else math.nan,
                "rss_mb": float(use["rss_mb"].iloc[0]) if not use.empty else math.nan,
            }
        )
    return rows


def result_row(
    keys: dict[str, Any],
    outcome: LoadOutcome,
    workers: list[dict[str, Any]],
    usage: pd.DataFrame,
    counts_source: str,
    elsewhere: bool = False,
) -> dict[str, Any]:
    """The point's row in results.csv: what was measured, nothing derived (fairness and the
    verdict are the analysis's). ``elsewhere``: the target ran on another host (its CPU, as its
    endpoint reported it, is not this machine's)."""
    stats = outcome.stats
    window = outcome.window_s
    ok = stats["requests"] - stats["failures"]
    gen = usage[usage["role"] == "generator"]
    remote = remote_load(outcome)
    local_max = float(gen["cpu_pct"].max()) if not gen.empty else math.nan
    # a remote load process near its core limits the point as a local one does
    maxima = [v for v in (local_max, remote["remote_gen_cpu_max_pct"]) if not math.isnan(v)]
    gen_max = max(maxima, default=math.nan)
    cpus = os.cpu_count() or 1
    machine = role_cpu_pct(usage, "machine")
    ours = {role: role_cpu_pct(usage, role) for role in ("primary", "worker", "generator")}
    # a target on another host used none of this machine's CPUs
    here = {role: ours[role] for role in (("generator",) if elsewhere else ours)}
    return {
        **keys,
        "window_s": window,
        "requests": int(stats["requests"]),
        "failures": int(stats["failures"]),
        "rps": ok / window,
        "fail_rps": stats["failures"] / window,
        "failure_ratio": stats["failures"] / stats["requests"] if stats["requests"] else math.nan,
        **{k: stats[k] for k in ("avg_ms", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms")},
        **latency_columns(outcome.latency, stats.get("samples", math.nan)),
        **{k: stats.get(k, math.nan) for k in OPEN_MODEL_COLUMNS},
        "worker_requests": sum(w["requests"] for w in workers) if workers else math.nan,
        "worker_connections": sum(w["connections"] for w in workers) if workers else math.nan,
        "counts_source": counts_source,
        "primary_cpu_pct": ours["primary"],
        "primary_rss_mb": _total(usage, "primary", "rss_mb"),
        "workers_cpu_pct": ours["worker"],
        "gen_cpu_pct": ours["generator"],
        "gen_cpu_max_pct": gen_max,
        "machine_cpu_pct": machine / cpus,
        # what the machine did besides this run (the runner itself included in "this run"); the
        # machine's and the processes' samples are taken apart, so a quiet machine can come out
        # a little below zero: that is none
        "other_cpu_pct": _not_below_zero(
            machine - sum(_zero(v) for v in here.values()) - _zero(role_cpu_pct(usage, "runner"))
        ),
        **remote,
    }


def remote_load(outcome: LoadOutcome) -> dict[str, Any]:
    """The load machines' side: their busiest locust worker (% of a core) and busiest machine
    (% of its CPUs), as they reported them, and the workers lost mid-window (the point is
    marked: its load was not all it was asked to be)."""
    remote = [w for w in outcome.load_workers if w.get("remote") and "cpu_pct" in w]
    return {
        "remote_gen_cpu_max_pct": max((float(w["cpu_pct"]) for w in remote), default=math.nan),
        "remote_machine_cpu_max_pct": max(
            (float(w["machine_cpu_pct"]) for w in remote), default=math.nan
        ),
        "load_workers_lost": len(outcome.lost),
        "load_lost": "; ".join(outcome.lost),
    }


def _not_below_zero(value: float) -> float:
    """0 for a negative value; NaN (not measured) stays NaN."""
    return 0.0 if value < 0 else value


def failure_rows(keys: dict[str, Any], outcome: LoadOutcome) -> list[dict[str, Any]]:
    rows = []
    for record in outcome.failures.to_dict("records"):
        rows.append(
            {
                **keys,
                "method": record.get("Method"),
                "name": record.get("Name"),
                "error": record.get("Error"),
                "occurrences": record.get("Occurrences"),
            }
        )
    return rows


def timeseries_rows(
    keys: dict[str, Any],
    outcome: LoadOutcome,
    reports: list[dict[str, Any]],
    samples: pd.DataFrame,
) -> list[dict[str, Any]]:
    """1-second series, time relative to the start of measurement (warm-up is negative):
    locust's throughput, failures, users and percentiles; each worker's served requests/s; CPU %
    of each sampled process. Finer, from locust's request events: ``ok_100ms`` (successful
    requests per 100 ms bin, every bin from the first to the last) and ``fail_100ms`` (failed
    ones, keyed by cause, bins with failures only); ``t`` is a bin's end."""
    origin = outcome.measure_start
    rows: list[dict[str, Any]] = []

    def add(t: float, source: str, key: str, series: str, value: float) -> None:
        rows.append(
            {
                **keys,
                "t": round(t - origin, 3),
                "source": source,
                "key": key,
                "series": series,
                "value": value,
            }
        )

    history = outcome.history
    if not history.empty:
        total = history[history["Name"] == "Aggregated"].sort_values("Timestamp")
        done = _unreset(total["Total Request Count"].to_numpy(dtype=float))
        failed = _unreset(total["Total Failure Count"].to_numpy(dtype=float))
        times = total["Timestamp"].to_numpy(dtype=float)
        for i in range(1, len(times)):
            dt = times[i] - times[i - 1]
            if dt <= 0:
                continue
            add(times[i], "locust", "", "rps", (done[i] - done[i - 1]) / dt)
            add(times[i], "locust", "", "fail_rps", (failed[i] - failed[i - 1]) / dt)
        for column, series in (("User Count", "users"), ("50%", "p50_ms"), ("99%", "p99_ms")):
            for t, value in zip(times, pd.to_numeric(total[column], errors="coerce"), strict=True):
                add(t, "locust", "", series, float(value))
    for t, key, series, count in outcome_rows(outcome.outcomes):
        add(t, "locust", key, series, count)
    for worker, points in counter_series({}, reports, {}, "requests").items():
        for t, rate in per_second(points, origin):
            add(t, "worker", worker, "rps", rate)
    for (role, key), group in samples.groupby(["role", "key"], sort=False):
        cumulative = list(zip(group["t"].astype(float), group["cpu_s"].astype(float), strict=True))
        for t, rate in per_second(cumulative, origin):
            add(t, str(role), str(key), "cpu_pct", 100.0 * rate)
    return rows


def outcome_rows(outcomes: pd.DataFrame) -> list[tuple[float, str, str, float]]:
    """(bin end, key, series, count): ok counts for every bin in the covered span (a bin with
    no success is a zero, not a gap), failure counts by cause where there were any."""
    if outcomes.empty:
        return []
    ok = outcomes[outcomes["outcome"] == "ok"].set_index("bin")["count"]
    width = float(outcomes["width"].iloc[0])
    bins = np.arange(int(outcomes["bin"].min()), int(outcomes["bin"].max()) + 1)
    dense = ok.reindex(bins, fill_value=0)
    rows = [(float((b + 1) * width), "", "ok_100ms", float(n)) for b, n in dense.items()]
    failed = outcomes[outcomes["outcome"] != "ok"]
    rows += [
        (float(r["end"]), str(r["outcome"]), "fail_100ms", float(r["count"]))
        for r in failed.to_dict("records")
    ]
    return rows


def per_second(cumulative: list[tuple[float, float]], origin: float) -> list[tuple[float, float]]:
    """A cumulative counter's rate over each whole second (origin + k − 1, origin + k] that its
    samples cover, by interpolating the counter at the second marks."""
    if len(cumulative) < 2:
        return []
    first = min(t for t, _ in cumulative)
    last = max(t for t, _ in cumulative)
    marks = np.arange(math.ceil(first - origin), math.floor(last - origin) + 1) + origin
    return [(t, count_at(cumulative, t) - count_at(cumulative, t - 1.0)) for t in marks[1:]]


def _unreset(values: np.ndarray) -> np.ndarray:
    """A cumulative count that restarts from zero at the warm-up cut, made monotonic again."""
    out = values.copy()
    offset = 0.0
    for i in range(1, len(values)):
        if values[i] < values[i - 1]:
            offset += values[i - 1]
        out[i] = values[i] + offset
    return out


def _zero(value: float) -> float:
    return 0.0 if math.isnan(value) else value


def _total(usage: pd.DataFrame, role: str, column: str) -> float:
    values = usage.loc[usage["role"] == role, column]
    return float(values.sum()) if not values.empty else math.nan


def _worker_order(worker: str) -> tuple[int, str]:
    return (int(worker), "") if worker.isdigit() else (1 << 30, worker)


# --- a whole point --------------------------------------------------------------------------


@dataclass(frozen=True)
class PointRows:
    """One point's rows of each table."""

    result: dict[str, Any]
    workers: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    timeseries: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)


def point_keys(point: Point) -> dict[str, Any]:
    return {
        "point": point.index,
        "repeat": point.repeat,
        "workload": point.workload,
        "policy": point.policy,
        "workers": point.workers,
    }


def point_rows(scenario: Scenario, seen: Observation, cpus: CpuPlan) -> PointRows:
    """Every row one observed point adds: its result, its workers, failures, time series, and
    the events of the runner's own (load processes started, faults it could not send)."""
    point = seen.point
    keys = point_keys(point)
    events = [
        started_row(point, Event.LOAD_STARTED, pid, role, seen.load_started)
        for pid, role in seen.load_pids
    ]
    events += [skipped_row(point, s.planned, s.reason, s.at) for s in seen.skipped]
    if seen.outcome is None:
        return PointRows(failed_row(scenario, point, seen.error), events=events)
    placement = {
        "cpus": os.cpu_count() or 1,
        "target_cpus": seen.target_host_cpus or len(cpus.target),
        "load_cpus": len(cpus.load),
        # a target on another host shares no CPU with this machine's load
        "cpu_shared": cpus.shared and seen.target_host_cpus is None,
    }
    outcome = seen.outcome
    usage = window_usage(seen.samples, outcome.measure_start, outcome.measure_end)
    workers = worker_rows(keys, seen.before, seen.reports, seen.after, outcome, usage)
    # the workers' own counts: over the lab's channel, or scraped from a url target's metrics
    counted = "metrics" if scenario.target.kind == "url" else "channel"
    source = counted if seen.before else ("header" if outcome.tally else "none")
    result = {
        **result_row(keys, outcome, workers, usage, source, seen.target_host_cpus is not None),
        "status": "ok",
        "error": "",
        "started": seen.started,
        "measure_start": outcome.measure_start,
        **point_level(scenario, point),
        "processes": seen.processes,
        "engine": seen.engine,
        **placement,
        **handoffs(seen.rr_before, seen.rr_after),
    }
    return PointRows(
        result,
        workers,
        failure_rows(keys, outcome),
        timeseries_rows(keys, outcome, seen.reports, seen.samples),
        events,
    )


def handoffs(before: dict[str, int] | None, after: dict[str, int] | None) -> dict[str, float]:
    """The point's round-robin hand-offs: accepted, handed, requeued (given back by a worker
    that left and handed on) and dropped (closed unserved: queued connections lost)."""
    names = ("accepted", "handed", "requeued", "dropped")
    if before is None or after is None:
        return {f"rr_{n}": math.nan for n in names}
    return {f"rr_{n}": float(after[n] - before[n]) for n in names}


def point_level(scenario: Scenario, point: Point) -> dict[str, Any]:
    """The point's load level: its users, the open model's offered rate, the search's step."""
    return {
        "users": point.users or scenario.load.users,
        "offered_rps": point.rate if point.rate is not None else scenario.load.rate,
        "search_step": point.step,
    }


def failed_row(scenario: Scenario, point: Point, error: str) -> dict[str, Any]:
    return {
        **point_keys(point),
        "status": "failed",
        "error": error,
        "started": time.time(),
        **point_level(scenario, point),
        "rps": math.nan,
    }


def started_row(
    point: Point, event: Event, pid: int, detail: str, at: float | None = None
) -> dict[str, Any]:
    """A process the run started at ``at`` (default now); every one is stopped by the run."""
    return {
        **point_keys(point),
        "time": time.time() if at is None else at,
        "event": event,
        "worker": None,
        "pid": pid,
        "detail": detail,
    }


def skipped_row(point: Point, planned: PlannedFault, reason: str, at: float) -> dict[str, Any]:
    """A planned fault the runner could not send (the primary reports the ones it skips); its
    ``t`` is when it was due."""
    return {
        **point_keys(point),
        "time": at,
        "t": planned.offset,
        "event": Event.FAULT_SKIPPED,
        "kind": planned.fault.kind,
        "detail": json.dumps({"id": planned.id, "offset": planned.offset, "reason": reason}),
    }


_COLUMN_FIELDS = ("event", "t", "worker", "pid", "slot", "kind", "code", "signal")


def target_event_rows(
    group: list[Point], results: list[dict[str, Any]], events: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The target's events as events.csv rows, each given to the point whose load had started
    by then (the first point before any load), with ``t`` from that point's measured window."""
    starts = {row["point"]: row for row in results if row.get("status") == "ok"}
    out = []
    for event in events:
        if event["event"] in ANSWERS:
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
                **point_keys(owner),
                "time": event["t"],
                "t": round(event["t"] - origin, 4),
                **{k: event.get(k) for k in _COLUMN_FIELDS[3:]},
                "worker": None if event.get("worker") is None else str(event["worker"]),
                "event": event["event"],
                "detail": json.dumps(detail) if detail else "",
            }
        )
    return out
