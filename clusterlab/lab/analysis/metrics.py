"""Metrics computed from the tidy tables: fairness over workers, aggregates over repeats and the
Universal Scalability Law fit. Plain data in, plain data out; nothing here draws or writes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Fairness:
    """Spread of work over workers: Jain's index (1/n … 1), coefficient of variation, max/mean."""

    jain: float
    cv: float
    max_mean: float


def jain_index(values: Sequence[float]) -> float:
    """J = (Σx)² / (n·Σx²); 1 when all equal, k/n when k workers share everything; NaN if no work."""
    x = np.asarray(values, dtype=float)
    total_sq = float(np.sum(x**2))
    if x.size == 0 or total_sq == 0.0:
        return math.nan
    return float(np.sum(x) ** 2 / (x.size * total_sq))


def coefficient_of_variation(values: Sequence[float]) -> float:
    """Population standard deviation over mean (so that J = 1 / (1 + CV²))."""
    x = np.asarray(values, dtype=float)
    if x.size == 0 or float(np.mean(x)) == 0.0:
        return math.nan
    return float(np.std(x) / np.mean(x))


def max_mean_ratio(values: Sequence[float]) -> float:
    """Busiest worker over the mean (1 = perfectly even); defined even when a worker got nothing."""
    x = np.asarray(values, dtype=float)
    if x.size == 0 or float(np.mean(x)) == 0.0:
        return math.nan
    return float(np.max(x) / np.mean(x))


def fairness(values: Sequence[float]) -> Fairness:
    return Fairness(jain_index(values), coefficient_of_variation(values), max_mean_ratio(values))


def fairness_columns(workers: list[dict[str, Any]]) -> dict[str, float]:
    """``jain_requests``, ``cv_requests``, ``max_mean_requests`` and the same for connections,
    over every worker row (a worker that served nothing counts as 0, not as absent)."""
    columns: dict[str, float] = {}
    for quantity in ("requests", "connections"):
        values = [float(w[quantity]) for w in workers if not _missing(w.get(quantity))]
        result = fairness(values) if values else Fairness(math.nan, math.nan, math.nan)
        for name, value in asdict(result).items():
            columns[f"{name}_{quantity}"] = value
    return columns


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


AGGREGATED = ["rps", "p50_ms", "p99_ms", "failure_ratio", "jain_requests", "jain_connections"]


def aggregate(results: pd.DataFrame) -> pd.DataFrame:
    """One row per (workload, policy, workers): medians over repeats, min and max of req/s
    (``rps_min``…), p50 and p99 (``p50_min``…) and Jain's index (``jain_requests_min``…),
    whether any repeat's p99 rested on too few samples, whether any repeat was generator-bound,
    whether all were target-bound, and the group's verdict. Only finished points are used."""
    done = results[results["status"] == "ok"]
    if done.empty:
        return pd.DataFrame()
    keys = ["workload", "policy", "workers"]
    grouped = done.groupby(keys, sort=True)
    table = grouped[AGGREGATED].median()
    for column in ("rps", "p50_ms", "p99_ms", "jain_requests"):
        spread = grouped[column].agg(["min", "max"])
        table = table.join(spread.add_prefix(column.removesuffix("_ms") + "_"))
    table["low_confidence_p99"] = grouped["low_confidence_p99"].any()
    table["repeats"] = grouped.size()
    table["generator_bound"] = grouped["generator_bound"].any()
    table["target_bound"] = grouped["verdict"].agg(lambda v: bool((v == "target").all()))
    table["verdict"] = grouped["verdict"].agg(group_verdict)
    return table.reset_index()


def group_verdict(verdicts: pd.Series) -> str:
    """One verdict for the repeats of a group: theirs when they agree, else "mixed"."""
    found = sorted(set(verdicts))
    return found[0] if len(found) == 1 else "mixed"


@dataclass(frozen=True)
class UslFit:
    """X(N) = λN / (1 + σ(N−1) + κN(N−1)); peak at N* = √((1−σ)/κ) when κ > 0 and N* lies
    within 4× the largest measured worker count (else None)."""

    lam: float
    sigma: float
    kappa: float
    r2: float
    peak_workers: float | None
    peak_rps: float | None


PEAK_REACH = 4.0


def usl(n: np.ndarray, lam: float, sigma: float, kappa: float) -> np.ndarray:
    return lam * n / (1 + sigma * (n - 1) + kappa * n * (n - 1))


def usl_fit(workers: Sequence[float], rps: Sequence[float]) -> UslFit | None:
    """Least-squares USL fit (scipy) with λ>0, 0≤σ≤1, κ≥0; None with fewer than 3 worker counts."""
    n = np.asarray(workers, dtype=float)
    x = np.asarray(rps, dtype=float)
    if np.unique(n).size < 3 or not np.all(np.isfinite(x)):
        return None
    from scipy.optimize import curve_fit  # here: ~0.5 s to import, and most runs fit nothing

    lam0 = float(np.max(x / n))
    try:
        params, _ = curve_fit(
            usl, n, x, p0=(lam0, 0.05, 0.001), bounds=([0.0, 0.0, 0.0], [np.inf, 1.0, np.inf])
        )
    except (RuntimeError, ValueError):
        return None
    lam, sigma, kappa = (float(v) for v in params)
    residual = float(np.sum((x - usl(n, lam, sigma, kappa)) ** 2))
    total = float(np.sum((x - np.mean(x)) ** 2))
    r2 = 1.0 - residual / total if total > 0 else math.nan
    # A peak far beyond the measured counts is an extrapolation, not a prediction: report N*
    # only within PEAK_REACH times the largest measured count.
    if kappa > 0:
        peak = math.sqrt((1 - sigma) / kappa)
        if peak <= PEAK_REACH * float(np.max(n)):
            peak_rps = float(usl(np.array([peak]), lam, sigma, kappa)[0])
            return UslFit(lam, sigma, kappa, r2, peak, peak_rps)
    return UslFit(lam, sigma, kappa, r2, None, None)


def usl_fits(results: pd.DataFrame) -> pd.DataFrame:
    """A USL fit per (workload, policy) over completed, target-bound points (the only ones
    that measure the target's capacity)."""
    usable = results[(results["status"] == "ok") & (results["verdict"] == "target")]
    rows = []
    for (workload, policy), group in usable.groupby(["workload", "policy"], sort=True):
        fit = usl_fit(group["workers"].tolist(), group["rps"].tolist())
        if fit is not None:
            rows.append({"workload": workload, "policy": policy, **asdict(fit)})
    return pd.DataFrame(rows)
