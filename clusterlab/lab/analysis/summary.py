"""summary.json: a run's analysis as stable, versioned, documented data (schema
``summary.schema.json`` beside this module), the input of ``compare`` and of named baselines.
"""

from __future__ import annotations

import json
import math
from importlib import resources
from typing import Any

import pandas as pd

from clusterlab.lab.analysis import recovery
from clusterlab.lab.analysis.tables import POINT_KEYS, Results

SUMMARY_SCHEMA = "clusterlab.lab.summary"
SUMMARY_VERSION = 3
#: Outside CPU (% of one core) above which a point's numbers are flagged as noisy.
NOISY_OTHER_CPU = 25.0
_MEASURES = (
    "window_s",
    "requests",
    "failures",
    "rps",
    "fail_rps",
    "failure_ratio",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "p999_ms",
    "max_ms",
)
_CPU = {
    "primary": "primary_cpu_pct",
    "workers": "workers_cpu_pct",
    "generator": "gen_cpu_pct",
    "generator_max": "gen_cpu_max_pct",
    "machine": "machine_cpu_pct",
    "other": "other_cpu_pct",
}
_HANDOFFS = ("accepted", "handed", "requeued", "dropped")


def schema() -> dict[str, Any]:
    """The JSON Schema of summary.json."""
    text = resources.files("clusterlab.lab.analysis").joinpath("summary.schema.json").read_text()
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def summary_dict(
    run: Results,
    points: pd.DataFrame,
    aggregates: pd.DataFrame,
    fits: pd.DataFrame,
    per_fault: pd.DataFrame,
    per_point: pd.DataFrame,
) -> dict[str, Any]:
    """The versioned summary, JSON-ready (NaN → null), without the list of plots."""
    return clean(
        {
            "schema": SUMMARY_SCHEMA,
            "schema_version": SUMMARY_VERSION,
            "scenario": run.meta["scenario"],
            "machine": run.meta["machine"],
            "cpus": run.meta.get("cpus"),
            "run": _run_facts(run.meta, points),
            "points": [point_record(row) for row in points.to_dict("records")],
            "aggregates": aggregates.to_dict("records"),
            "usl": fits.to_dict("records"),
            "recovery": {
                "method": {
                    "bin_s": 0.1,
                    "pre_window_s": recovery.PRE_WINDOW_S,
                    "level": "fault-free: the measured window before the first fault",
                    "min_fault_free_s": recovery.MIN_FAULT_FREE_S,
                    "span_s": recovery.SPAN_S,
                    "recovered_fraction": recovery.RECOVERED,
                },
                "points": per_point.to_dict("records"),
                "faults": per_fault.to_dict("records"),
            },
        }
    )


def _run_facts(meta: dict[str, Any], points: pd.DataFrame) -> dict[str, Any]:
    failed = int((points["status"] != "ok").sum()) if not points.empty else 0
    return {
        "started": meta["started"],
        "finished": meta["finished"],
        "partial": bool(meta["partial"]),
        "interrupted": bool(meta["interrupted"]),
        "planned_points": meta["planned_points"],
        "measured_points": len(points) - failed,
        "failed_points": failed,
    }


def point_record(row: dict[str, Any]) -> dict[str, Any]:
    """One point of summary.json from its analysed row."""
    return {
        **{k: row[k] for k in POINT_KEYS},
        "status": row["status"],
        "error": row.get("error") or None,
        **{k: row.get(k) for k in _MEASURES},
        "fairness": {
            q: {m: row.get(f"{m}_{q}") for m in ("jain", "cv", "max_mean")}
            for q in ("requests", "connections")
        },
        "cpu_pct": {name: row.get(column) for name, column in _CPU.items()},
        "verdict": row.get("verdict") or None,
        "verdict_reason": row.get("verdict_reason") or None,
        "generator_bound": bool(row.get("generator_bound")),
        "bound_reason": row.get("bound_reason") or None,
        "rr": _handoffs(row),
        "load": {
            "workload": row.get("mix"),
            "users": row.get("users"),
            "offered_rps": row.get("offered_rps"),
            "level": row.get("level"),
            "search_step": row.get("search_step") or None,
        },
        "little": row.get("little_flag") or None,
        "latency": {
            "engine": row.get("engine") or "locust",
            "samples": row.get("latency_samples"),
            "p50_ci_ms": [row.get("p50_lo_ms"), row.get("p50_hi_ms")],
            "p99_ci_ms": [row.get("p99_lo_ms"), row.get("p99_hi_ms")],
            "low_confidence": [
                name for name in ("p99", "p999") if row.get(f"low_confidence_{name}")
            ],
        },
    }


def _handoffs(row: dict[str, Any]) -> dict[str, Any] | None:
    counts = {n: row.get(f"rr_{n}") for n in _HANDOFFS}
    if all(v is None or (isinstance(v, float) and math.isnan(v)) for v in counts.values()):
        return None
    return counts


def clean(value: Any) -> Any:
    """JSON-ready: NaN → None, numpy scalars → Python."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
