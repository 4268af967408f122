"""Policies compared where they differ: per workload, worker count and fault, each policy's
latency tail (p50, p99, p99.9, max) and fairness with their spread over repeats, which policy
gave the lowest p99, and whether that is what queueing theory predicts."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from clusterlab.lab.analysis.metrics import group_verdict
from clusterlab.lab.analysis.open_faithful import faithful

#: The figures compared, each as its median and min/max over repeats.
FIGURES = ("p50_ms", "p99_ms", "p999_ms", "max_ms", "jain_requests")
#: Policies that look at the workers' load (open connections, requests in flight, idleness)
#: against those that do not: under heterogeneous service times or a slow worker, theory puts
#: the first ahead (join-the-shortest-queue and its approximations: Mitzenmacher's two choices,
#: Lu et al.'s join-idle-queue) of blind assignment (round robin; SO_REUSEPORT's hash of the
#: connection onto one worker's own accept queue).
INFORMED = ("least-conn", "p2c", "jiq")
BLIND = ("rr", "reuseport")
#: ``none``: one accept queue shared by every worker, each accepting when its loop is free: a
#: central queue the workers pull from (M/G/k), which theory puts level with or ahead of any
#: dispatching policy: reported beside the call, not on either side of it.
PULL = "none"
#: Schedulers beyond Node's own policies: their presence in a sweep turns the comparison on.
NODE_POLICIES = ("rr", "none", "reuseport")


def compares_policies(policies: list[str]) -> bool:
    """A sweep whose policies include one beyond Node's rr/none/reuseport."""
    return len(policies) > 1 and any(p not in NODE_POLICIES for p in policies)


def fault_label(faults: list[dict[str, Any]], workload: str) -> str:
    """The faults a workload's points got, in a few words ("none" without any)."""
    labels = []
    for fault in faults:
        if fault.get("workloads") and workload not in fault["workloads"]:
            continue
        if fault["kind"] == "slow":
            labels.append(
                f"slow ×{fault['factor']:g} for {fault['length']:g} s ({fault['target']})"
            )
        else:
            labels.append(f"{fault['kind']} ({fault['target']})")
    return "; ".join(labels) or "none"


def policy_table(points: pd.DataFrame, faults: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per workload × workers × policy over the finished points: ``fault``, repeats,
    each of FIGURES as median with ``_min``/``_max``, the repeats' verdict, and ``limited``: a
    repeat was limited by the load generator or the machine (its latencies are not the
    target's)."""
    done = points[points["status"] == "ok"] if not points.empty else points
    if done.empty:
        return pd.DataFrame()
    rows = []
    for (workload, workers, policy), group in done.groupby(
        ["workload", "workers", "policy"], sort=False
    ):
        row: dict[str, Any] = {
            "workload": workload,
            "workers": workers,
            "fault": fault_label(faults, str(workload)),
            "policy": policy,
            "repeats": len(group),
            "verdict": group_verdict(group["verdict"]),
            **_faithful_counts(group),
        }
        for figure in FIGURES:
            values = pd.to_numeric(group[figure], errors="coerce").astype(float)
            row.update(
                {
                    figure: float(values.median()),
                    f"{figure}_min": float(values.min()),
                    f"{figure}_max": float(values.max()),
                }
            )
        rows.append(row)
    frame = pd.DataFrame(rows)
    order = {name: i for i, name in enumerate(dict.fromkeys(frame["workload"]))}
    return frame.sort_values(
        "workload", key=lambda w: w.map(order), kind="stable", ignore_index=True
    )


def _faithful_counts(group: pd.DataFrame) -> dict[str, Any]:
    """``limited``: a repeat's latencies are not the target's (a closed-model repeat limited by
    the load generator or the machine; an open-model one not faithful); ``open``: the group's
    open-model repeats; ``faithful``: those that ran the asked load (``open_faithful``);
    ``unfaithful``: why the others did not, "; "-joined."""
    records = group.to_dict("records")
    checks = [faithful(row) for row in records]
    judged = [(ok, why) for ok, why in checks if ok is not None]
    # an open-model point below capacity is unsaturated (or, on shared CPUs, machine-bound) by
    # design: whether it ran the asked load decides; a closed-model point's verdict does
    limits = [
        ok is False if ok is not None else row["verdict"] in ("generator", "machine")
        for (ok, _), row in zip(checks, records, strict=True)
    ]
    return {
        "limited": any(limits),
        "open": len(judged),
        "faithful": sum(1 for ok, _ in judged if ok),
        "unfaithful": "; ".join(why for ok, why in judged if not ok),
    }


def policy_records(table: pd.DataFrame) -> dict[str, Any]:
    """The comparison as summary.json keeps it: the table's rows and the cases."""
    if table.empty:
        return {"table": [], "cases": []}
    return {
        "table": table.to_dict("records"),
        "cases": [asdict(case) for case in cases(table)],
    }


@dataclass(frozen=True)
class Case:
    """One workload × workers (and its fault): the lowest p99 and what theory says of it."""

    workload: str
    workers: int
    fault: str
    best: str
    runner_up: str
    separated: bool  # the best's p99 range over repeats lies below every other policy's
    repeats: int  # the fewest repeats of a policy in this case
    theory: str  # "matches", "contradicts", "tie", "untrusted" or "n/a"
    note: str


def cases(table: pd.DataFrame) -> list[Case]:
    """Per workload × workers measured under 2+ policies: the lowest median p99 and the
    comparison with theory: the best informed policy against the best blind one, called only
    when their p99 ranges over repeats do not overlap and no group was limited by the load
    generator or the machine."""
    found = []
    for (workload, workers), group in table.groupby(["workload", "workers"], sort=False):
        if len(group) < 2:
            continue
        ranked = group.sort_values("p99_ms").to_dict("records")
        best, others = ranked[0], ranked[1:]
        repeats = int(group["repeats"].min())
        separated = repeats > 1 and all(best["p99_ms_max"] < o["p99_ms_min"] for o in others)
        theory, note = _theory(ranked)
        found.append(
            Case(
                str(workload),
                int(workers),
                str(best["fault"]),
                str(best["policy"]),
                str(others[0]["policy"]),
                separated,
                repeats,
                theory,
                note,
            )
        )
    return found


def _theory(ranked: list[dict[str, Any]]) -> tuple[str, str]:
    """The best informed policy against the best blind one, among the groups no repeat of
    which was limited by the load or the machine (those are named and left out)."""
    if not any(r["policy"] in INFORMED for r in ranked) or not any(
        r["policy"] in BLIND for r in ranked
    ):
        return "n/a", "needs an informed and a blind policy"
    limited = [r["policy"] for r in ranked if r["limited"]]
    left_out = (
        f" ({', '.join(limited)} left out: limited by the load or the machine, or not faithful)"
    )
    informed = [r for r in ranked if r["policy"] in INFORMED and not r["limited"]]
    blind = [r for r in ranked if r["policy"] in BLIND and not r["limited"]]
    if not informed or not blind:
        return "untrusted", f"limited by the load or the machine under {', '.join(limited)}"
    theory, note = _call(informed[0], blind[0], ranked)
    return theory, note + (left_out if limited else "")


def _call(a: dict[str, Any], b: dict[str, Any], ranked: list[dict[str, Any]]) -> tuple[str, str]:
    """``a`` (informed) against ``b`` (blind), each its side's lowest median p99."""
    pair = f"{a['policy']} p99 {a['p99_ms']:.1f} ms vs {b['policy']} {b['p99_ms']:.1f} ms"
    pair += "".join(
        f"; none (a shared accept queue the free workers pull from) {r['p99_ms']:.1f} ms"
        for r in ranked
        if r["policy"] == PULL
    )
    if min(a["repeats"], b["repeats"]) < 2:
        return "tie", pair + " (one repeat: not tested)"
    if a["p99_ms_max"] < b["p99_ms_min"]:
        return "matches", pair
    if b["p99_ms_max"] < a["p99_ms_min"]:
        return "contradicts", pair
    return "tie", pair + " (ranges over repeats overlap)"


def policy_summary(points: pd.DataFrame, meta: dict[str, Any]) -> dict[str, Any]:
    """summary.json's ``policies`` (when the sweep compares schedulers) and
    ``capacity_probes`` (when load.rate was a share of capacity)."""
    scenario = meta["scenario"]
    found: dict[str, Any] = {}
    if compares_policies(list(scenario["sweep"]["policies"])):
        found["policies"] = policy_records(policy_table(points, scenario.get("faults") or []))
    if meta.get("capacity_probes") is not None:
        found["capacity_probes"] = meta["capacity_probes"]
    return found
