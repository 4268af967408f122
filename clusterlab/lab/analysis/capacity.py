"""Capacity: what a run says about load — which points met the SLO, the highest rate that met
it per worker count and policy (bracketed by the lowest rate above it that missed), the knee of
each latency-versus-throughput curve, Little's law per point, CPU efficiency and headroom.

Plain data in, plain data out; the recommendation in words is ``recommend``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from clusterlab.lab.analysis.recommend import Recommendation, recommend_slo, recommend_throughput
from clusterlab.lab.analysis.usl import UslConfidence, usl_confidence
from clusterlab.lab.config.slo import Slo, parse_slo

#: A probe meets the SLO only if it also delivered this share of its offered rate.
DELIVERED_SHARE = 0.9
#: Little's law holds within this relative error, else the point is flagged.
LITTLE_TOLERANCE = 0.10
#: Kneedle needs at least this many load levels.
KNEE_MIN_LEVELS = 5
GROUP = ["mix", "policy", "workers"]


def point_rate(row: Mapping[str, Any]) -> float:
    """The rate a point ran at: its offered rate (open model), else what it achieved."""
    offered = _num(row.get("offered_rps"))
    return offered if not math.isnan(offered) else _num(row.get("rps"))


def probe_met(row: Mapping[str, Any], slo: Slo) -> bool:
    """A finished point met the SLO: every bound holds, and (open model) it delivered at least
    DELIVERED_SHARE of the rate offered (a generator that fell behind met nothing)."""
    if row.get("status") != "ok" or not slo.met(row):
        return False
    offered = _num(row.get("offered_rps"))
    return math.isnan(offered) or _num(row.get("rps")) >= DELIVERED_SHARE * offered


@dataclass(frozen=True)
class Capacity:
    """The highest rate that met the SLO in one repeat of one worker count × policy: ``met``
    (None: nothing met), ``missed`` the lowest rate above it that missed (None: none did, so
    ``met`` is a lower bound), ``missed_verdict`` what limited that miss (only a ``target``
    miss makes ``met`` the system's answer)."""

    mix: str
    policy: str
    workers: int
    repeat: int
    met: float | None
    missed: float | None
    missed_verdict: str
    probes: int
    confirmed: bool | None

    @property
    def systems(self) -> bool:
        """``met`` is the target's own limit: the miss above it was target-bound."""
        return self.met is not None and self.missed is not None and self.missed_verdict == "target"


def capacities(points: pd.DataFrame, slo: Slo) -> list[Capacity]:
    """Per mix × policy × workers × repeat, from every finished point (a sweep's levels or a
    search's probes): the bracket of the highest rate that met the SLO every time it ran, and
    whether a confirmation at that rate was run (None: not run)."""
    done = points[points["status"] == "ok"]
    out = []
    for (mix, policy, workers, repeat), group in done.groupby([*GROUP, "repeat"], sort=True):
        rows = group.to_dict("records")
        scored = [(point_rate(r), probe_met(r, slo), r) for r in rows]
        # a rate met the SLO only if it met it every time it ran (a confirmation included)
        failed = {rate for rate, ok, _ in scored if not ok}
        met = max((rate for rate, ok, _ in scored if ok and rate not in failed), default=None)
        above = [(rate, r) for rate, ok, r in scored if not ok and (met is None or rate > met)]
        missed = min(above, key=lambda s: s[0], default=None)
        confirms = [
            ok for rate, ok, r in scored if r.get("search_step") == "confirm" and rate == met
        ]
        out.append(
            Capacity(
                str(mix),
                str(policy),
                int(workers),
                int(repeat),
                met,
                missed[0] if missed else None,
                str(missed[1].get("verdict") or "") if missed else "",
                len(rows),
                all(confirms) if confirms else None,
            )
        )
    return out


def capacity_table(found: list[Capacity]) -> pd.DataFrame:
    """Per mix × policy × workers over repeats: the median, min and max of the highest rate
    that met the SLO, the bracket (median missed rate), whether every repeat's answer is the
    target's own, probes taken, and whether the confirmation runs met the SLO."""
    columns = [*GROUP, "met", "met_min", "met_max", "missed", "systems", "probes", "confirmed"]
    columns.append("repeats")
    if not found:
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame([{**c.__dict__, "systems": c.systems} for c in found])
    rows = []
    for key, group in frame.groupby(GROUP, sort=True):
        met = group["met"].dropna().astype(float)
        missed = group["missed"].dropna().astype(float)
        confirmed = group["confirmed"].dropna()
        rows.append(
            {
                **dict(zip(GROUP, key, strict=True)),
                "met": float(met.median()) if len(met) == len(group) else math.nan,
                "met_min": float(met.min()) if len(met) else math.nan,
                "met_max": float(met.max()) if len(met) else math.nan,
                "missed": float(missed.median()) if len(missed) else math.nan,
                "systems": bool(group["systems"].all()),
                "probes": int(group["probes"].sum()),
                "confirmed": bool(confirmed.all()) if len(confirmed) else None,
                "repeats": len(group),
            }
        )
    return pd.DataFrame(rows, columns=columns)


def knees(points: pd.DataFrame) -> pd.DataFrame:
    """Per mix × policy × workers with at least KNEE_MIN_LEVELS load levels (median over
    repeats): Kneedle's (``kneed``) knee of p99 against the load level, given as the req/s
    achieved there and its p99; NaN when Kneedle finds none."""
    done = points[(points["status"] == "ok") & points["level"].notna()]
    rows = []
    for key, group in done.groupby(GROUP, sort=True):
        curve = group.groupby("level", sort=True)[["rps", "p99_ms"]].median()
        if len(curve) < KNEE_MIN_LEVELS:
            continue
        # imported here, once a curve has the levels: kneed imports scipy.stats (~1 s)
        from kneed import KneeLocator

        levels = curve.index.to_numpy(float)
        knee = KneeLocator(
            levels, curve["p99_ms"].to_numpy(float), curve="convex", direction="increasing"
        ).knee
        at = curve.loc[knee] if knee is not None else None
        rows.append(
            {
                **dict(zip(GROUP, key, strict=True)),
                "knee_level": float(knee) if knee is not None else math.nan,
                "knee_rps": float(at["rps"]) if at is not None else math.nan,
                "knee_p99_ms": float(at["p99_ms"]) if at is not None else math.nan,
                "levels": len(curve),
            }
        )
    columns = [*GROUP, "knee_level", "knee_rps", "knee_p99_ms", "levels"]
    return pd.DataFrame(rows, columns=columns)


def little(row: Mapping[str, Any], wait_s: float) -> tuple[float, float]:
    """Little's law for one point: (expected, observed) requests in the system.

    Closed model: the users are always in the system, sending or thinking, so users ≈ req/s ×
    (mean latency + think time). Open model: what must be in flight, rate × mean latency, is
    compared with the users the generator had to hold it. NaN when a figure is missing."""
    rate = _num(row.get("rps")) + _num(row.get("fail_rps"), 0.0)
    latency_s = _num(row.get("avg_ms")) / 1000
    users = _num(row.get("users"))
    if math.isnan(_num(row.get("offered_rps"))):
        return users, rate * (latency_s + wait_s)
    return rate * latency_s, users


def little_flag(row: Mapping[str, Any], wait_s: float) -> str:
    """Why a point breaks Little's law by more than LITTLE_TOLERANCE, or "" when it holds."""
    expected, observed = little(row, wait_s)
    if row.get("status") != "ok" or not expected > 0 or math.isnan(observed):
        return ""
    if math.isnan(_num(row.get("offered_rps"))):
        error = observed / expected - 1
        if abs(error) <= LITTLE_TOLERANCE or (error > 0 and row.get("engine") == "wrk"):
            # wrk's mean latency carries its coordinated-omission correction's synthetic
            # samples: above the answers' own, so only time lost is a finding
            return ""
        why = (
            "time lost outside the measured latency (in the generator, between requests?)"
            if error < 0
            else "more in flight than users: the latency counts time not on the wire, or the "
            "rate's and the latency's windows differ"
        )
        return (
            f"{expected:.0f} users but req/s × (latency + wait) = {observed:.1f} "
            f"({error:+.0%}): {why}"
        )
    if expected <= observed * (1 + LITTLE_TOLERANCE):
        return ""
    return (
        f"rate × latency = {expected:.1f} in flight but only {observed:.0f} users: the "
        "generator could not hold that many requests open"
    )


def efficiency(points: pd.DataFrame, cpus: int | None = None) -> pd.DataFrame:
    """Per mix × policy × workers (medians over repeats and levels at their busiest): req/s per
    core the target used, and its CPU headroom — the share of its CPUs it left unused (``cpus``:
    the target's CPUs for runs recorded before placement was)."""
    done = points[points["status"] == "ok"].copy()
    if done.empty:
        return pd.DataFrame(columns=[*GROUP, "rps", "cores_used", "rps_per_core", "headroom"])
    target_pct = done["workers_cpu_pct"].fillna(0) + done["primary_cpu_pct"].fillna(0)
    done["cores_used"] = target_pct / 100
    placed = done["target_cpus"].fillna(done["cpus"]).astype(float)
    placed = placed.fillna(float(cpus)) if cpus is not None else placed
    capacity = np.minimum(placed, done["workers"].clip(lower=1).astype(float))
    done["headroom"] = (1 - done["cores_used"] / capacity).clip(lower=0)
    done["rps_per_core"] = done["rps"] / done["cores_used"].where(done["cores_used"] > 0)
    busiest = done.sort_values("rps").groupby([*GROUP, "repeat"], sort=True).tail(1)
    table = busiest.groupby(GROUP, sort=True)[["rps", "cores_used", "rps_per_core", "headroom"]]
    return table.median().reset_index()


def _num(value: Any, default: float = math.nan) -> float:
    if value is None or isinstance(value, str):
        return default
    number = float(value)
    return default if math.isnan(number) else number


@dataclass(frozen=True)
class CapacityFindings:
    """Everything capacity planning reads: the SLO (None without one), the capacity table,
    the knees, efficiency and headroom, the USL fits with intervals, and the recommendation."""

    slo: Slo | None
    table: pd.DataFrame
    knees: pd.DataFrame
    efficiency: pd.DataFrame
    usl: list[UslConfidence]
    recommendation: Recommendation

    def to_dict(self) -> dict[str, Any]:
        """summary.json's ``capacity``."""
        return {
            "slo": [b.text for b in self.slo.bounds] if self.slo else None,
            "slo_rate": self.slo.rate if self.slo else None,
            "recommendation": self.recommendation.to_dict(),
            "max_within_slo": self.table.to_dict("records"),
            "knees": self.knees.to_dict("records"),
            "efficiency": self.efficiency.to_dict("records"),
            "usl": [_usl_record(u) for u in self.usl],
        }


def find_capacity(
    points: pd.DataFrame, aggregates: pd.DataFrame, scenario: Mapping[str, Any], cpus: int
) -> CapacityFindings:
    """The capacity findings of an analysed run (``points`` with mix, level and verdicts)."""
    slo = parse_slo(scenario["slo"]) if scenario.get("slo") else None
    found = capacities(points, slo) if slo is not None and not points.empty else []
    table = capacity_table(found)
    advice = (
        recommend_slo(table, slo, slo.rate, cpus)
        if slo is not None
        else recommend_throughput(aggregates, cpus)
    )
    if points.empty:
        return CapacityFindings(slo, table, pd.DataFrame(), pd.DataFrame(), [], advice)
    return CapacityFindings(
        slo, table, knees(points), efficiency(points, cpus), usl_confidence(points, cpus), advice
    )


def _usl_record(fit: UslConfidence) -> dict[str, Any]:
    intervals = {
        name: [value.estimate, value.low, value.high] if value is not None else None
        for name, value in (
            ("lam", fit.lam),
            ("sigma", fit.sigma),
            ("kappa", fit.kappa),
            ("peak_workers", fit.peak_workers),
            ("peak_rps", fit.peak_rps),
        )
    }
    return {
        "workload": fit.mix,
        "policy": fit.policy,
        "cpus": fit.cpus,
        "verdict": fit.verdict,
        "refused": fit.refused or None,
        **intervals,
        "ceiling_rps": fit.ceiling_rps,
        "cpu_limited_workers": list(fit.cpu_limited),
        "predicted": [
            {"workers": w, "measured_rps": m, "predicted_rps": p} for w, m, p in fit.predicted
        ],
    }


def busiest_levels(points: pd.DataFrame) -> pd.DataFrame:
    """With load levels: each repeat's busiest finished level per workload × policy × workers,
    named by its workload as written (what the worker-count figures show); else ``points``."""
    if points.empty or points["level"].isna().all():
        return points
    done = points[points["status"] == "ok"].sort_values("rps")
    busiest = done.groupby([*GROUP, "repeat"], sort=True).tail(1).sort_values("point")
    return busiest.assign(workload=busiest["mix"])
