"""Turn one point's raw observations (locust's outcome, worker count reports, psutil samples)
into rows of the tidy tables. Pure functions: no processes, no files.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from clusterlab.lab.running.load import LoadOutcome

Counts = Mapping[str, Mapping[str, Any]]


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
    workers = sorted(set(requests) | set(outcome.tally), key=_worker_order)
    rows = []
    for worker in workers:
        served = requests.get(worker, [])
        # Load stops at measure_end and the last snapshot is taken after locust exited, so the
        # worker's final count is its count at the end; only the start needs interpolating.
        in_window = max(served)[1] - count_at(served, outcome.measure_start) if served else 0.0
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
    bound_cpu: float,
) -> dict[str, Any]:
    """The point's row in results.csv (fairness columns are added by ``metrics``)."""
    stats = outcome.stats
    window = outcome.window_s
    ok = stats["requests"] - stats["failures"]
    gen = usage[usage["role"] == "generator"]
    gen_max = float(gen["cpu_pct"].max()) if not gen.empty else math.nan
    cpus = os.cpu_count() or 1
    machine = _total(usage, "machine", "cpu_pct")
    ours = {role: _total(usage, role, "cpu_pct") for role in ("primary", "worker", "generator")}
    bound, reason = generator_bound(
        gen_max,
        ours["generator"],
        ours["worker"] + _zero(ours["primary"]),
        machine / cpus,
        bound_cpu,
    )
    return {
        **keys,
        "window_s": window,
        "requests": int(stats["requests"]),
        "failures": int(stats["failures"]),
        "rps": ok / window,
        "fail_rps": stats["failures"] / window,
        "failure_ratio": stats["failures"] / stats["requests"] if stats["requests"] else math.nan,
        **{k: stats[k] for k in ("avg_ms", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms")},
        "worker_requests": sum(w["requests"] for w in workers) if workers else math.nan,
        "worker_connections": sum(w["connections"] for w in workers) if workers else math.nan,
        "counts_source": counts_source,
        "primary_cpu_pct": ours["primary"],
        "primary_rss_mb": _total(usage, "primary", "rss_mb"),
        "workers_cpu_pct": ours["worker"],
        "gen_cpu_pct": ours["generator"],
        "gen_cpu_max_pct": gen_max,
        "machine_cpu_pct": machine / cpus,
        # what the machine did besides this run (the runner itself included in "this run")
        "other_cpu_pct": machine
        - sum(_zero(v) for v in ours.values())
        - _zero(_total(usage, "runner", "cpu_pct")),
        "generator_bound": bound,
        "bound_reason": reason,
    }


def generator_bound(
    gen_max: float,
    gen_total: float,
    cluster: float,
    machine_pct: float,
    limit: float,
    saturated: float = 80.0,
) -> tuple[bool, str]:
    """Was the load generator, not the cluster, the limit? Yes when one locust process is at
    ``limit`` % of a core (locust runs on one core per process), or when the machine's CPUs are
    ``saturated`` % busy and locust used at least as much CPU as the cluster (then the cluster
    got only what locust left over). CPU figures are % of one core; ``machine_pct`` of all CPUs."""
    if gen_max >= limit:
        return True, f"a locust process used {gen_max:.0f}% of a core (limit {limit:g}%)"
    if machine_pct >= saturated and gen_total >= cluster:
        return True, (
            f"CPUs {machine_pct:.0f}% busy and locust used {gen_total:.0f}% of a core, "
            f"the cluster {cluster:.0f}%"
        )
    return False, ""


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
    by_worker: dict[str, list[tuple[float, float]]] = {}
    for report in reports:
        by_worker.setdefault(str(report["worker"]), []).append(
            (float(report["sent"]), float(report["requests"]))
        )
    for worker, points in by_worker.items():
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
