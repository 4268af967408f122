"""Synthetic summary.json documents (schema-valid) for the comparison and gate tests.

Points carry the saturation verdict of summary version 3 (``verdict`` "target" unless told, and
``verdict_reason``) and outside CPU (``cpu_pct.other``); ``legacy=True`` writes a version 2 summary
without verdicts. ``edit_points`` changes chosen points of a summary.
"""

import copy
from collections.abc import Callable
from typing import Any

from clusterlab.lab.analysis.summary import SUMMARY_VERSION

MACHINE = {
    "cpu_model": "Test CPU",
    "available_parallelism": 2,
    "cpu_count": 2,
    "affinity": [0, 1],
    "python": "3.11",
    "packages": {},
    "git_revision": "x",
}


def summary(
    rps: dict[tuple[str, str, int], list[float]],
    cpu_model: str = "Test CPU",
    p99: float = 20.0,
    jain: float = 0.99,
    failure_ratio: float = 0.0,
    other_cpu: float = 5.0,
    verdict: str = "target",
    legacy: bool = False,
) -> dict[str, Any]:
    """A summary whose group (workload, policy, workers) has these per-repeat rps values."""
    points: list[dict[str, Any]] = []
    for (workload, policy, workers), values in rps.items():
        for repeat, value in enumerate(values):
            points.append(
                {
                    "point": len(points),
                    "repeat": repeat,
                    "workload": workload,
                    "policy": policy,
                    "workers": workers,
                    "status": "ok",
                    "error": None,
                    "rps": float(value),
                    "p50_ms": 5000 / value,
                    "p99_ms": p99,
                    "failure_ratio": failure_ratio,
                    "fairness": {
                        "requests": {"jain": jain, "cv": 0.1, "max_mean": 1.1},
                        "connections": {"jain": 1.0, "cv": 0.0, "max_mean": 1.0},
                    },
                    "cpu_pct": {"workers": 150.0, "generator": 40.0, "other": other_cpu},
                    "generator_bound": verdict == "generator",
                    **(
                        {}
                        if legacy
                        else {"verdict": verdict, "verdict_reason": f"limited by the {verdict}"}
                    ),
                }
            )
    repeats = max(len(v) for v in rps.values())
    return {
        "schema": "clusterlab.lab.summary",
        "schema_version": 2 if legacy else SUMMARY_VERSION,
        "scenario": {
            "name": "t",
            "target": {"kind": "builtin"},
            "sweep": {"workers": [1, 2], "repeats": repeats},
            "load": {},
            "workloads": {"cpu": {"/cpu?ms=2": 1}},
            "report": {},
        },
        "machine": {**MACHINE, "cpu_model": cpu_model},
        "run": {
            "started": 0,
            "finished": 1,
            "partial": False,
            "interrupted": False,
            "planned_points": len(points),
            "measured_points": len(points),
            "failed_points": 0,
        },
        "points": points,
        "aggregates": [
            {
                "workload": w,
                "policy": p,
                "workers": n,
                "rps": v[0],
                "rps_min": v[0],
                "rps_max": v[0],
                "repeats": len(v),
                "generator_bound": False,
            }
            for (w, p, n), v in rps.items()
        ],
        "usl": [],
        "recovery": {
            "method": {"bin_s": 0.1, "pre_window_s": 1.0, "span_s": 0.5, "recovered_fraction": 0.9},
            "points": [],
            "faults": [],
        },
        "plots": {},
    }


def edit_points(
    summary: dict[str, Any], where: Callable[[dict[str, Any]], bool], **changes: Any
) -> dict[str, Any]:
    """A copy of ``summary`` whose points matching ``where`` have ``changes`` (a key "other"
    sets cpu_pct.other)."""
    out = copy.deepcopy(summary)
    for point in out["points"]:
        if where(point):
            for key, value in changes.items():
                if key == "other":
                    point["cpu_pct"]["other"] = value
                else:
                    point[key] = value
    return out
