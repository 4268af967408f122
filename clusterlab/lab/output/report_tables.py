"""The report's tables, as DataFrames of formatted cells: the closing summary, the USL fits,
every point, and for runs with faults the recovery per point and every fault."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from clusterlab.lab.analysis import recovery
from clusterlab.lab.output.text import fmt


def verdict_label(verdict: str) -> str:
    """A verdict as the tables say it: "target-bound", "generator-bound", "mixed", …"""
    if verdict in ("target", "generator", "machine"):
        return f"{verdict}-bound"
    return {"mixed": "mixed (see points)", "": "–"}.get(verdict, verdict)


def _spread(r: dict[str, Any], column: str, prefix: str, digits: int) -> str:
    """The median, and the min–max over repeats when there was more than one."""
    text = fmt(r[column], digits)
    if r["repeats"] > 1:
        text += f" [{fmt(r[f'{prefix}_min'], digits)}–{fmt(r[f'{prefix}_max'], digits)}]"
    return text


def summary_table(aggregates: pd.DataFrame) -> pd.DataFrame:
    """The closing table: one row per workload × policy × workers, each figure with its spread
    over repeats; * marks a p99 resting on fewer than 10 samples beyond it."""
    if aggregates.empty:
        return pd.DataFrame()
    rows = []
    for r in aggregates.to_dict("records"):
        low = "*" if r.get("low_confidence_p99") else ""
        rows.append(
            {
                "workload": r["workload"],
                "policy": r["policy"],
                "workers": r["workers"] or "n/a",
                "req/s": _spread(r, "rps", "rps", 0),
                "p50 ms": _spread(r, "p50_ms", "p50", 2),
                "p99 ms": _spread(r, "p99_ms", "p99", 2) + low,
                "fail %": fmt(100 * r["failure_ratio"], 2),
                "Jain req": _spread(r, "jain_requests", "jain_requests", 3),
                "Jain conn": fmt(r["jain_connections"], 3),
                "verdict": verdict_label(r["verdict"]),
            }
        )
    return pd.DataFrame(rows)


def fit_table(fits: pd.DataFrame) -> pd.DataFrame:
    """The USL fits: λ, σ, κ, R², the predicted peak and its throughput."""
    return pd.DataFrame(
        [
            {
                "workload": f["workload"],
                "policy": f["policy"],
                "λ (req/s per worker)": fmt(f["lam"], 0),
                "σ": fmt(f["sigma"], 4),
                "κ": fmt(f["kappa"], 5),
                "R²": fmt(f["r2"], 3),
                "N*": fmt(f["peak_workers"], 1),
                "X(N*) req/s": fmt(f["peak_rps"], 0),
            }
            for f in fits.to_dict("records")
        ]
    )


def describe_fault(fault: dict[str, Any]) -> str:
    kind = {
        "exit": f"exit {fault['code']}",
        "exception": "exception" + (" (fatal)" if fault["fatal"] else " (answered 500)"),
        "hang": "hang" + (" in a handler" if fault["hang"] == "handler" else " (SIGSTOP)"),
        "slow": f"slow ×{fault.get('factor', 4.0):g} for {fault.get('length', 5.0):g} s",
    }.get(fault["kind"], fault["kind"].upper())
    if fault["every"] is not None:
        start = fault["every"] if fault["start"] is None else fault["start"]
        when = f"every {fault['every']:g} s from {start:g} s"
    else:
        when = f"at random, {fault['rate']:g}/s (seed {fault['seed']})"
    stop = f" until {fault['stop']:g} s" if fault["stop"] is not None else ""
    return f"{kind} to the {fault['target']} worker {when}{stop}"


def _pair(a: Any, b: Any, digits: int = 2) -> str:
    return f"{fmt(a, digits)} / {fmt(b, digits)}"


def _causes(row: dict[str, Any]) -> str:
    found = [f"{c} {row[f'fail_{c}']:.0f}" for c in recovery.CAUSES if row.get(f"fail_{c}")]
    return ", ".join(found) or "–"


def recovery_table(per_point: pd.DataFrame) -> pd.DataFrame:
    """The report's recovery table: one row per point with faults."""
    rows = []
    for r in per_point.to_dict("records"):
        rows.append(
            {
                "workload": r["workload"],
                "policy": r["policy"],
                "workers": r["workers"] or "n/a",
                "rep": r["repeat"] + 1,
                "faults (skipped)": f"{r['faults']} ({r['skipped']})",
                "crashes": r["crashes"],
                "replaced": r["replaced"],
                "to listening s (med / max)": _pair(
                    r["to_listening_median_s"], r["to_listening_max_s"]
                ),
                "fault-free req/s": fmt(r.get("fault_free_rps"), 0),
                "back to 90 % of it": f"{r['recovered']} of {r['took_effect']}"
                + (" (never back by the end)" if r.get("never_back") else ""),
                "to 90 % s (med / max)": _pair(r["to_recover_median_s"], r["to_recover_max_s"]),
                "failed req (per fault med)": f"{r['failures']:.0f} ({fmt(r['failures_per_fault_median'], 0)})",
                "by cause": _causes(r),
                "rr requeued / lost": _pair(r["rr_requeued"], r["rr_dropped"], 0),
                "restarts (refused)": f"{r['restarts']} ({r['refused']})"
                + (" limit" if r["limit_reached"] else ""),
            }
        )
    return pd.DataFrame(rows)


def fault_table(per_fault: pd.DataFrame) -> pd.DataFrame:
    """Every injected fault: when it acted, what it did, how long recovery took."""
    rows = []
    for r in per_fault.to_dict("records"):
        rows.append(
            {
                "policy": r["policy"],
                "point": r["point"] + 1,
                "fault": r["fault"],
                "t s": fmt(r["t_effect"], 2) if math.isfinite(r["t_effect"]) else "never fired",
                "kind": r["how"] if r["how"] in ("SIGKILL", "SIGTERM", "SIGSTOP") else r["kind"],
                "worker (slot)": f"{r['worker']} ({fmt(r['slot'], 0)})",
                "exit": r["exit_kind"] or "–",
                "hang detected s": fmt(r["t_hang_detected"] - r["t_effect"], 2),
                "replacement": r["replacement"] or "–",
                "to listening s": fmt(r["to_listening_s"], 2),
                "pre-crash req/s": fmt(r["pre_rps"], 0),
                "to 90 % of fault-free s": fmt(r["to_recover_s"], 2)
                if r.get("recovery") == "back"
                else (r.get("recovery") or "–"),
                "failed req": fmt(r["failures"], 0),
                "by cause": _causes(r),
            }
        )
    return pd.DataFrame(rows)


def _with_interval(r: dict[str, Any], name: str) -> str:
    """A percentile with its distribution-free interval, * when it rests on too few samples."""
    text = fmt(r.get(f"{name}_ms"), 2)
    lo, hi = r.get(f"{name}_lo_ms"), r.get(f"{name}_hi_ms")
    if isinstance(lo, float) and math.isfinite(lo) and isinstance(hi, float) and math.isfinite(hi):
        text += f" [{fmt(lo, 2)}–{fmt(hi, 2)}]"
    return text + ("*" if r.get(f"low_confidence_{name}") else "")


def point_table(results: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for r in results.to_dict("records"):
        rows.append(
            {
                "#": r["point"] + 1,
                "rep": r["repeat"] + 1,
                "workload": r["workload"],
                "policy": r["policy"],
                "workers": r["workers"] or "n/a",
                "status": r["status"],
                "req/s": fmt(r.get("rps"), 0),
                "p99 ms [95 % CI]": _with_interval(r, "p99"),
                "samples": fmt(r.get("latency_samples") or r.get("requests"), 0),
                "Jain req": fmt(r.get("jain_requests"), 3),
                "max/mean req": fmt(r.get("max_mean_requests"), 2),
                "Jain conn": fmt(r.get("jain_connections"), 3),
                "workers CPU %": fmt(r.get("workers_cpu_pct"), 0),
                "primary CPU %": fmt(r.get("primary_cpu_pct"), 0),
                "locust CPU % (max proc)": f"{fmt(r.get('gen_cpu_pct'), 0)} ({fmt(r.get('gen_cpu_max_pct'), 0)})",
                "other CPU %": fmt(r.get("other_cpu_pct"), 0),
                "verdict": verdict_label(r.get("verdict") or ""),
                "note": r.get("error") or "",
            }
        )
    return pd.DataFrame(rows)
