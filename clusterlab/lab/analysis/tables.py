"""The tidy tables of a run: written after every point so an interrupted run keeps what it
measured, and read back into pandas with one call (``load_results``).

Files: results.csv (point × repeat), workers.csv, timeseries.csv, events.csv, failures.csv, and
meta.json (scenario, machine facts, timing, partial flag), all under the run's directory.
events.csv's ``time`` is Unix time, ``t`` the same instant in seconds from the point's start of
measurement (the origin of timeseries.csv's ``t``); ``detail`` holds the other fields as JSON.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

TABLES = ("results", "workers", "timeseries", "events", "failures")
POINT_KEYS = ["point", "repeat", "workload", "policy", "workers"]
COLUMNS: dict[str, list[str]] = {
    "results": POINT_KEYS
    + [
        "status",
        "error",
        "started",
        "window_s",
        "users",
        "offered_rps",
        "search_step",
        "processes",
        "requests",
        "failures",
        "rps",
        "fail_rps",
        "failure_ratio",
        "avg_ms",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "p999_ms",
        "max_ms",
        "worker_requests",
        "worker_connections",
        "counts_source",
        "primary_cpu_pct",
        "primary_rss_mb",
        "workers_cpu_pct",
        "gen_cpu_pct",
        "gen_cpu_max_pct",
        "machine_cpu_pct",
        "other_cpu_pct",
        "measure_start",
        "engine",
        "latency_samples",
        "p50_lo_ms",
        "p50_hi_ms",
        "p99_lo_ms",
        "p99_hi_ms",
        "arrivals",
        "late_arrivals",
        "p50_sent_ms",
        "p99_sent_ms",
        "cpus",
        "target_cpus",
        "load_cpus",
        "cpu_shared",
        "rr_accepted",
        "rr_handed",
        "rr_requeued",
        "rr_dropped",
        "remote_gen_cpu_max_pct",
        "remote_machine_cpu_max_pct",
        "load_workers_lost",
        "load_lost",
    ],
    "workers": POINT_KEYS
    + [
        "worker",
        "pid",
        "requests",
        "connections",
        "requests_seen_by_locust",
        "load_requests_counted",
        "load_requests_seen",
        "cpu_s",
        "cpu_pct",
        "rss_mb",
    ],
    "timeseries": POINT_KEYS + ["t", "source", "key", "series", "value"],
    "events": POINT_KEYS
    + ["time", "t", "event", "worker", "pid", "slot", "kind", "code", "signal", "detail"],
    "failures": POINT_KEYS + ["method", "name", "error", "occurrences"],
}


#: Columns that older runs wrote into results.csv but the analysis now derives (fairness from
#: workers.csv, the verdict from the CPU columns): dropped on reading, so nothing reads a stale
#: copy.
DERIVED_COLUMNS = (
    "generator_bound",
    "bound_reason",
    *(f"{m}_{q}" for q in ("requests", "connections") for m in ("jain", "cv", "max_mean")),
)

INTEGER_COLUMNS = {
    "events": ("pid", "slot", "code"),
    "workers": (
        "pid",
        "requests",
        "connections",
        "requests_seen_by_locust",
        "load_requests_counted",
        "load_requests_seen",
    ),
}
TEXT_COLUMNS = (
    "error",
    "load_lost",
    "search_step",
    "counts_source",
    "detail",
    "worker",
    "key",
    "name",
    "kind",
    "signal",
)


@dataclass(frozen=True)
class Results:
    """A run's tables as DataFrames, and its meta.json."""

    directory: Path
    meta: dict[str, Any]
    results: pd.DataFrame
    workers: pd.DataFrame
    timeseries: pd.DataFrame
    events: pd.DataFrame
    failures: pd.DataFrame


def load_results(directory: str | Path) -> Results:
    """Read a run directory (written by ``clusterlab run``) into pandas."""
    directory = Path(directory)
    meta_path = directory / "meta.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{directory}: not a lab run directory (no meta.json)")
    frames = {}
    for name in TABLES:
        path = directory / f"{name}.csv"
        text_columns = {c: object for c in TEXT_COLUMNS if c in COLUMNS[name]}
        exists = path.exists() and path.stat().st_size
        # only empty cells are missing: "n/a" is a policy name (url targets), not NaN
        frame = (
            pd.read_csv(path, dtype=text_columns, keep_default_na=False, na_values=[""])
            if exists
            else pd.DataFrame()
        )
        # columns added since a run was written (events' t, slot, …) read as missing values
        missing = [c for c in COLUMNS[name] if c not in frame.columns]
        frame = frame.assign(**dict.fromkeys(missing, math.nan)) if missing else frame
        frames[name] = frame if not frame.empty else pd.DataFrame(columns=COLUMNS[name])
    results = frames["results"].drop(columns=list(DERIVED_COLUMNS), errors="ignore")
    if not results.empty:
        results["error"] = results["error"].fillna("")
    frames["results"] = results
    return Results(directory, json.loads(meta_path.read_text()), **frames)


@dataclass
class RunTables:
    """Rows collected during a run, rewritten to CSV after every point."""

    directory: Path
    rows: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: {name: [] for name in TABLES}
    )

    def add(self, table: str, rows: list[dict[str, Any]]) -> None:
        self.rows[table].extend(rows)

    def write(self) -> None:
        for name in TABLES:
            frame = pd.DataFrame(self.rows[name], columns=COLUMNS[name])
            for column in INTEGER_COLUMNS.get(name, ()):
                # integers with gaps: "123", not "123.0"
                frame[column] = pd.to_numeric(frame[column]).round().astype("Int64")
            _atomic_write(self.directory / f"{name}.csv", frame.to_csv(index=False))

    def write_meta(self, meta: dict[str, Any]) -> None:
        _atomic_write(self.directory / "meta.json", json.dumps(meta, indent=2, default=str))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
