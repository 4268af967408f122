"""Change points in one metric's series of runs: binary segmentation with a permutation test,
and a σ rule for the newest run. Pure functions of a list of numbers.

**Change points.** A segment of the series (at first the whole of it) is split where the
two-sample Student t statistic of the runs before and after is largest (each side at least
``min_size`` runs). Whether that split is real is a permutation test (``scipy.stats.
permutation_test``, the runs' order shuffled ``resamples`` times with a fixed seed): its p-value
is the share of shuffles whose *largest* statistic over all splits reaches the observed one, so it
accounts for having chosen the best of many splits. A split with p ≤ ``alpha`` is kept and both
sides are searched again (E-Divisive's scheme, with Hunter / Apache Otava's t statistic). On a
series without a change the first test is the only one, so a flat series shows a change point with
probability ``alpha`` (1 % by default), whatever its length or noise. Change points whose
relative size (mean after / mean before − 1, between adjacent segments) is under ``min_change``
are then dropped, smallest first, and the sizes of their neighbours taken again.

The statistic: for a split after k of n runs, Q(k) = k(n − k)/n · (mean₁ − mean₂)². Shuffling
keeps the total sum of squares S, and t² = (n − 2) Q / (S − Q), so the split of largest Q is the
split of largest |t| and the permutation test of max Q is that of max |t|.

**The newest run.** A change point needs ``min_size`` runs on each side, so the newest runs cannot
show one yet. :func:`latest_outlier` measures the newest value against the runs since the last
change point (at most ``window``, Netflix's 40): z = (x − mean) / sd; beyond ``sigmas`` (4) it is
an outlier.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_ALPHA = 0.01
DEFAULT_MIN_SIZE = 3
DEFAULT_MIN_CHANGE = 0.05
RESAMPLES = 999
SEED = 0
SIGMAS = 4.0
WINDOW = 40
MIN_WINDOW = 5


@dataclass(frozen=True)
class ChangePoint:
    """The series changes at ``index`` (the first run of the new level)."""

    index: int
    before: float  # mean of the segment before
    after: float  # mean of the segment after
    p_value: float

    @property
    def change(self) -> float:
        """Relative size: after / before − 1 (±∞ from a level of 0)."""
        return relative(self.before, self.after)


@dataclass(frozen=True)
class Outlier:
    """The newest value against the runs since the last change point."""

    value: float
    mean: float
    sd: float
    z: float
    runs: int  # how many runs the mean and sd are over

    @property
    def change(self) -> float:
        return relative(self.mean, self.value)


def relative(before: float, after: float) -> float:
    if before == 0:
        return 0.0 if after == 0 else math.copysign(math.inf, after)
    return after / before - 1


def _split_statistic(x: np.ndarray, min_size: int, axis: int = -1) -> np.ndarray:
    """Q(k) for every allowed split k, along ``axis`` (vectorised over the other axes)."""
    x = np.moveaxis(np.asarray(x, dtype=float), axis, -1)
    n = x.shape[-1]
    k = np.arange(1, n)
    sums = np.cumsum(x, axis=-1)
    left = sums[..., :-1] / k
    right = (sums[..., -1:] - sums[..., :-1]) / (n - k)
    q = k * (n - k) / n * (left - right) ** 2
    return q[..., min_size - 1 : n - min_size]


def best_split(
    x: Sequence[float] | np.ndarray, min_size: int = DEFAULT_MIN_SIZE
) -> tuple[int, float]:
    """(k, p): the split of largest t (the first k runs before it) and its permutation p-value;
    (0, 1.0) when the series is too short to split or constant."""
    values = np.asarray(x, dtype=float)
    if len(values) < 2 * min_size or np.ptp(values) == 0:
        return 0, 1.0
    k = int(np.argmax(_split_statistic(values, min_size))) + min_size
    from scipy import stats  # here, not at the top: 1-2 s to import, needed past 2 x min_size runs

    result = stats.permutation_test(
        (values,),
        lambda v, axis: _split_statistic(v, min_size, axis).max(axis=-1),
        permutation_type="pairings",
        vectorized=True,
        n_resamples=RESAMPLES,
        alternative="greater",
        rng=SEED,
    )
    return k, float(result.pvalue)


def _segment(values: np.ndarray, start: int, alpha: float, min_size: int) -> dict[int, float]:
    """Change points (index → p) in values[start:] found by binary segmentation."""
    k, p = best_split(values, min_size)
    if not k or p > alpha:
        return {}
    return {
        **_segment(values[:k], start, alpha, min_size),
        start + k: p,
        **_segment(values[k:], start + k, alpha, min_size),
    }


def _with_levels(values: np.ndarray, found: dict[int, float]) -> list[ChangePoint]:
    if not found:
        return []
    edges = [0, *sorted(found), len(values)]
    means = [float(values[a:b].mean()) for a, b in zip(edges, edges[1:], strict=False)]
    return [
        ChangePoint(index, means[i], means[i + 1], found[index])
        for i, index in enumerate(sorted(found))
    ]


def change_points(
    series: Sequence[float],
    alpha: float = DEFAULT_ALPHA,
    min_size: int = DEFAULT_MIN_SIZE,
    min_change: float = DEFAULT_MIN_CHANGE,
) -> list[ChangePoint]:
    """The change points of a series (finite values, oldest first); see the module docstring."""
    values = np.asarray(series, dtype=float)
    if not np.isfinite(values).all():
        raise ValueError("change_points: expected finite values")
    found = _segment(values, 0, alpha, min_size)
    while True:
        points = _with_levels(values, found)
        small = [c for c in points if abs(c.change) < min_change]
        if not small:
            return points
        del found[min(small, key=lambda c: abs(c.change)).index]


def latest_outlier(
    series: Sequence[float], since: int = 0, window: int = WINDOW, sigmas: float = SIGMAS
) -> tuple[Outlier | None, bool]:
    """(the newest value against up to ``window`` runs before it from index ``since`` on,
    whether it lies beyond ``sigmas``); (None, False) with fewer than ``MIN_WINDOW`` such runs."""
    values = np.asarray(series, dtype=float)
    before = values[max(since, len(values) - 1 - window) : len(values) - 1]
    if len(values) < 1 or len(before) < MIN_WINDOW:
        return None, False
    mean, sd = float(before.mean()), float(before.std(ddof=1))
    value = float(values[-1])
    if sd > 0:
        z = (value - mean) / sd
    else:
        z = 0.0 if value == mean else math.copysign(math.inf, value - mean)
    return Outlier(value, mean, sd, z, len(before)), abs(z) > sigmas
