"""The report's answers in words — which policy is faster, whether more workers pay — drawn
only from target-bound groups (aggregates whose every repeat was target-bound), with the spread
over repeats deciding what counts as a difference."""

from __future__ import annotations

import pandas as pd

from clusterlab.lab.output.text import fmt


def _overlap(a: dict[str, float], b: dict[str, float]) -> bool:
    """Do two groups' min–max ranges of req/s over repeats overlap?"""
    return a["rps_min"] <= b["rps_max"] and b["rps_min"] <= a["rps_max"]


def policy_lines(bound: pd.DataFrame) -> list[str]:
    """Per workload and worker count measured target-bound under 2+ policies: the fastest one,
    by how much, or a tie when the ranges over repeats overlap."""
    lines = []
    for (workload, workers), group in bound.groupby(["workload", "workers"], sort=True):
        if len(group) < 2:
            continue
        ranked = group.sort_values("rps", ascending=False).to_dict("records")
        best, second = ranked[0], ranked[1]
        ratio = best["rps"] / second["rps"] if second["rps"] else float("nan")
        rates = ", ".join(f"{r['policy']} {fmt(r['rps'], 0)}" for r in ranked)
        if min(best["repeats"], second["repeats"]) < 2:
            verdict = (
                f"{best['policy']} {fmt(ratio, 2)}× {second['policy']} in one repeat: not tested"
            )
        elif not _overlap(best, second):
            verdict = f"{best['policy']} is faster, {fmt(ratio, 2)}× {second['policy']}"
        else:
            verdict = f"a tie between {best['policy']} and {second['policy']} within the spread"
        lines.append(f"{workload}, {workers} workers: {verdict} (req/s: {rates}).")
    return lines


def worker_lines(bound: pd.DataFrame) -> list[str]:
    """Per workload and policy with 2+ target-bound worker counts: the speed-up from the
    fewest to the most workers, and where adding workers stopped paying."""
    lines = []
    for (workload, policy), group in bound.groupby(["workload", "policy"], sort=True):
        if group["workers"].nunique() < 2:
            continue
        ordered = group.sort_values("workers").to_dict("records")
        first, last = ordered[0], ordered[-1]
        best = max(ordered, key=lambda r: r["rps"])
        speedup = last["rps"] / first["rps"] if first["rps"] else float("nan")
        text = (
            f"{workload} · {policy}: {first['workers']} → {last['workers']} workers gives "
            f"{fmt(speedup, 2)}× the req/s ({fmt(first['rps'], 0)} → {fmt(last['rps'], 0)}; "
            f"linear would be {fmt(last['workers'] / first['workers'], 2)}×)"
        )
        tested = min(best["repeats"], last["repeats"]) > 1
        if best["workers"] < last["workers"] and tested and not _overlap(best, last):
            text += f"; more workers stopped paying after {best['workers']}"
        elif best["workers"] < last["workers"]:
            text += f"; the most req/s at {best['workers']} (one repeat: not tested)"
        lines.append(text + ".")
    return lines
