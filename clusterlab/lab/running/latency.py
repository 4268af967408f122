"""A point's latency as recorded in results.csv: the sample count behind its percentiles and a
distribution-free 95 % interval on p50 and p99 (order statistics).

For the p-quantile of n samples, the number of samples below it is Binomial(n, p); the ranks
l = F⁻¹(2.5 %) and u = F⁻¹(97.5 %) + 1 of that distribution bound the quantile with at least
95 % confidence whatever the latency distribution: the interval is [x₍ₗ₎, x₍ᵤ₎], read from the
engine's distribution (HDR histogram or wrk's percentiles) at percentiles 100·l/n and 100·u/n.
With too few samples a bound falls outside the data: it is missing, and the percentile is as
good as a guess.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

try:  # the binomial quantile scipy.stats.binom.ppf computes, without importing scipy.stats
    # (~1 s here, at every run's start): for 0 < q < 1, n ≥ 1 and 0 < p < 1 ppf is exactly it
    from scipy.special._ufuncs import _binom_ppf
except ImportError:  # scipy before 1.12 keeps it elsewhere
    from scipy.stats import binom

    _binom_ppf = binom.ppf

LEVEL = 0.95


def quantile_at(points: pd.DataFrame, percentile: float) -> float:
    """The distribution's value (ms) at ``percentile``, interpolated between kept points."""
    if points.empty:
        return math.nan
    x = points["percentile"].to_numpy(dtype=float)
    y = points["ms"].to_numpy(dtype=float)
    return float(np.interp(percentile, x, y))


def interval(points: pd.DataFrame, samples: int, quantile: float) -> tuple[float, float]:
    """The order-statistics interval (ms) on the ``quantile`` (0–1) of ``samples`` values;
    NaN for a bound beyond the smallest or largest sample."""
    if samples <= 0 or points.empty:
        return math.nan, math.nan
    tail = (1 - LEVEL) / 2
    low = int(_binom_ppf(tail, samples, quantile))
    high = int(_binom_ppf(1 - tail, samples, quantile)) + 1
    lo = quantile_at(points, 100 * low / samples) if low >= 1 else math.nan
    hi = quantile_at(points, 100 * high / samples) if high <= samples else math.nan
    return lo, hi


def latency_columns(points: pd.DataFrame, samples: float) -> dict[str, float]:
    """``latency_samples`` and the p50 and p99 intervals for results.csv."""
    n = 0 if math.isnan(samples) else int(samples)
    p50 = interval(points, n, 0.5)
    p99 = interval(points, n, 0.99)
    return {
        "latency_samples": float(n) if n else math.nan,
        "p50_lo_ms": p50[0],
        "p50_hi_ms": p50[1],
        "p99_lo_ms": p99[0],
        "p99_hi_ms": p99[1],
    }
