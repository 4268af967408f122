"""The Universal Scalability Law with confidence: the fit on target-bound points, the target's
CPUs modelled as a cap (past one worker per CPU the workers share cores, so a flat line is not
read as coherency cost), residual-bootstrap intervals on σ, κ, λ, N* and X(N*), the ceiling,
a verdict, predicted against measured, and the fit refused with a reason when the intervals
are too wide to say anything.

X(N) = λ·m / (1 + σ(m − 1) + κN(N − 1)), m = min(N, CPUs): contention (σ) among the workers
that run at once, coherency (κ) among all of them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

#: Resamples of the residual bootstrap (seeded: the same data give the same intervals).
RESAMPLES = 200
LEVEL = 0.95
#: The fit is refused when N*'s interval reaches further than this share from N*.
MAX_PEAK_UNCERTAINTY = 0.5
#: σ or κ whose interval's lower end is at most this counts as indistinguishable from 0.
NEGLIGIBLE = 1e-3
#: Linear in the measured range: σ and κ intervals reach no further than these.
LINEAR_SIGMA = 0.1
LINEAR_KAPPA = 0.01
TOO_FEW = "fewer than 3 worker counts"
NO_RESIDUAL = (
    "3 points for 3 parameters: the curve passes through them and nothing is left to say how "
    "sure it is (add a worker count or repeats)"
)


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float

    def within(self, share: float) -> bool:
        """The interval lies within ± ``share`` of the estimate."""
        if not all(math.isfinite(v) for v in (self.estimate, self.low, self.high)):
            return False
        return self.low >= self.estimate * (1 - share) and self.high <= self.estimate * (1 + share)


@dataclass(frozen=True)
class UslConfidence:
    """One workload × policy's fit with intervals, or its refusal (``refused`` says why)."""

    mix: str
    policy: str
    cpus: int
    verdict: str
    refused: str = ""
    lam: Interval | None = None
    sigma: Interval | None = None
    kappa: Interval | None = None
    peak_workers: Interval | None = None
    peak_rps: Interval | None = None
    ceiling_rps: float | None = None
    cpu_limited: tuple[int, ...] = ()
    #: (workers, measured median req/s, predicted req/s)
    predicted: tuple[tuple[int, float, float], ...] = field(default=())


def capped_usl(n: np.ndarray, lam: float, sigma: float, kappa: float, cpus: float) -> np.ndarray:
    m = np.minimum(n, cpus)
    return lam * m / (1 + sigma * (m - 1) + kappa * n * (n - 1))


def _fit(n: np.ndarray, x: np.ndarray, cpus: int) -> tuple[float, float, float] | None:
    def model(n: np.ndarray, lam: float, sigma: float, kappa: float) -> np.ndarray:
        return capped_usl(n, lam, sigma, kappa, cpus)

    from scipy.optimize import OptimizeWarning, curve_fit  # here: ~0.5 s to import, rarely used

    lam0 = float(np.max(x / np.minimum(n, cpus)))
    try:
        with warnings.catch_warnings():  # a resample may leave a parameter undetermined
            warnings.simplefilter("ignore", OptimizeWarning)
            params, _ = curve_fit(
                model,
                n,
                x,
                p0=(lam0, 0.05, 0.001),
                bounds=([0.0, 0.0, 0.0], [np.inf, 1.0, np.inf]),
            )
    except (RuntimeError, ValueError):
        return None
    lam, sigma, kappa = (float(v) for v in params)
    return lam, sigma, kappa


def peak(lam: float, sigma: float, kappa: float, cpus: int) -> tuple[float, float]:
    """N* = √((1 − σ)/κ) and X(N*) (inf, and the ceiling, when κ = 0)."""
    if kappa <= 0:
        return math.inf, ceiling(lam, sigma, cpus)
    n_star = math.sqrt((1 - sigma) / kappa)
    return n_star, float(capped_usl(np.array([n_star]), lam, sigma, kappa, cpus)[0])


def ceiling(lam: float, sigma: float, cpus: int) -> float:
    """The most the law allows without coherency cost: λ·m/(1 + σ(m − 1)) at m = CPUs."""
    return lam * cpus / (1 + sigma * (cpus - 1))


def fit_with_confidence(
    mix: str, policy: str, workers: Sequence[float], rps: Sequence[float], cpus: int
) -> UslConfidence:
    """Fit, bootstrap and judge one curve; refused with a reason when it says nothing."""
    n, x = np.asarray(workers, dtype=float), np.asarray(rps, dtype=float)
    limited = tuple(sorted({int(w) for w in n if w > cpus}))
    if np.unique(n).size < 3:
        return UslConfidence(mix, policy, cpus, "refused", TOO_FEW)
    if n.size <= 3:
        return UslConfidence(mix, policy, cpus, "refused", NO_RESIDUAL)
    found = _fit(n, x, cpus)
    if found is None:
        return UslConfidence(mix, policy, cpus, "refused", "the fit did not converge")
    lam, sigma, kappa = found
    fitted = capped_usl(n, lam, sigma, kappa, cpus)
    samples = _bootstrap(n, fitted, x - fitted, cpus)
    lam_i, sigma_i, kappa_i = (_interval(v, samples[:, i]) for i, v in enumerate(found))
    n_star, x_star = peak(lam, sigma, kappa, cpus)
    peaks = np.array([peak(a, b, c, cpus) for a, b, c in samples]).reshape(-1, 2)
    peak_n = _interval(n_star, peaks[:, 0]) if len(peaks) else None
    peak_x = _interval(x_star, peaks[:, 1]) if len(peaks) else None
    verdict, refused = _judge(sigma_i, kappa_i, peak_n, float(np.max(n)))
    measured = pd.Series(x).groupby(n).median()
    predicted = tuple(
        (int(w), float(m), float(capped_usl(np.array([w]), lam, sigma, kappa, cpus)[0]))
        for w, m in measured.items()
    )
    return UslConfidence(
        mix,
        policy,
        cpus,
        verdict,
        refused,
        lam_i,
        sigma_i,
        kappa_i,
        peak_workers=peak_n,
        peak_rps=peak_x,
        ceiling_rps=ceiling(lam, sigma, cpus),
        cpu_limited=limited,
        predicted=predicted,
    )


def _bootstrap(n: np.ndarray, fitted: np.ndarray, residuals: np.ndarray, cpus: int) -> np.ndarray:
    """Refits on the fitted curve plus resampled residuals (seeded). The residuals are centred
    and scaled by √(n / (n − 3)): a fit of 3 parameters leaves them smaller than the errors."""
    rng = np.random.default_rng(0)
    residuals = (residuals - residuals.mean()) * math.sqrt(residuals.size / (residuals.size - 3))
    found = []
    for _ in range(RESAMPLES):
        again = _fit(n, fitted + rng.choice(residuals, size=residuals.size), cpus)
        if again is not None:
            found.append(again)
    return np.array(found) if found else np.empty((0, 3))


def _interval(estimate: float, values: np.ndarray) -> Interval:
    tail = (1 - LEVEL) / 2 * 100
    if values.size == 0:
        return Interval(estimate, math.nan, math.nan)
    low, high = np.percentile(values, [tail, 100 - tail])
    return Interval(estimate, float(low), float(high))


def _judge(
    sigma: Interval, kappa: Interval, peak_n: Interval | None, largest: float
) -> tuple[str, str]:
    """(verdict, refusal): coherency-bound when κ is clearly above 0 and N* is known within
    ±50 %; contention-bound when σ is clearly above 0 and κ is not; linear when neither is."""
    if kappa.low > NEGLIGIBLE:
        if peak_n is None or not peak_n.within(MAX_PEAK_UNCERTAINTY):
            low, high = (peak_n.low, peak_n.high) if peak_n else (math.nan, math.nan)
            return "refused", (
                f"N* uncertain by more than ±{MAX_PEAK_UNCERTAINTY:.0%} "
                f"({_fmt(low)}–{_fmt(high)} workers)"
            )
        return "coherency-bound", ""
    if sigma.low > NEGLIGIBLE:
        return "contention-bound", ""
    if sigma.high <= LINEAR_SIGMA and kappa.high <= LINEAR_KAPPA:
        return "linear in the measured range", ""
    return "refused", (
        f"intervals too wide to tell up to {largest:g} workers (σ {_fmt(sigma.low, 3)}–"
        f"{_fmt(sigma.high, 3)}, κ {_fmt(kappa.low, 4)}–{_fmt(kappa.high, 4)})"
    )


def _fmt(value: float, digits: int = 1) -> str:
    return "∞" if math.isinf(value) else ("–" if math.isnan(value) else f"{value:.{digits}f}")


def usl_confidence(points: pd.DataFrame, cpus: int) -> list[UslConfidence]:
    """A fit with intervals per mix × policy over finished target-bound points; in a load
    sweep, each repeat's busiest target-bound level per worker count (its saturated rate)."""
    usable = points[(points["status"] == "ok") & (points["verdict"] == "target")]
    if usable.empty:
        return []
    usable = usable.sort_values("rps").groupby(["mix", "policy", "workers", "repeat"]).tail(1)
    return [
        fit_with_confidence(str(mix), str(policy), g["workers"].tolist(), g["rps"].tolist(), cpus)
        for (mix, policy), g in usable.groupby(["mix", "policy"], sort=True)
    ]
