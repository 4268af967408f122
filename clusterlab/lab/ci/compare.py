"""Regression comparison of two runs: ``clusterlab compare BASELINE CURRENT``.

For every metric and workload × policy × workers group, the per-repeat samples of both runs are
compared. A change counts only when it is **both** beyond the metric's threshold (default 10 %,
as a factor: worse means ratio beyond 1.1 or below 1/1.1) **and** significant over the repeats,
as in asv: two-sided Mann–Whitney U on the raw repeat values, p < alpha (default 0.01).

Why Mann–Whitney U and not a bootstrap interval: with the 4–10 repeats a CI run can afford, a
bootstrap interval of the median is too coarse to trust (it can only take the sample values), while
the U test is exact at those sizes (its permutation distribution, which stays exact with the ties
that whole-millisecond percentiles produce), makes no normality assumption (throughput and tail latency are
skewed) and ignores an outlying repeat. Its smallest attainable p-value is 2 / C(n1+n2, n1): when
that is not below alpha, no outcome could be significant, so the row says "not comparable
(insufficient repeats)" instead of guessing (5 + 5 repeats reach 0.0079 < 0.01).

Machine-independent ratios are compared too: scaling efficiency (rps at n workers / (n/n_min ×
rps at the smallest count), paired by repeat), the rr/none throughput ratio (paired by repeat) and
fairness (Jain's index). When the machine facts of the two runs differ the comparison warns and
only those ratios gate; absolute numbers are shown for information.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
from scipy import stats

from clusterlab.lab.analysis.summary import NOISY_OTHER_CPU
from clusterlab.lab.analysis.summary import schema as summary_schema
from clusterlab.lab.ci.gates import groups, point_value
from clusterlab.lab.config.gates import GROUP_KEYS, METRICS

DEFAULT_THRESHOLD = 0.10
DEFAULT_ALPHA = 0.01
# metric → machine independent?  (direction and path come from gates.METRICS, or DERIVED)
COMPARED: dict[str, bool] = {
    "rps": False,
    "p50_ms": False,
    "p99_ms": False,
    "failure_ratio": True,
    "fairness.jain": True,
}
DERIVED = {"scaling_efficiency": +1, "rr_none_ratio": +1}
MACHINE_FACTS = ("cpu_model", "available_parallelism", "cpu_count")


class CompareInputError(ValueError):
    """A file or directory that cannot be compared; the message is one line for the user."""


@dataclass(frozen=True)
class Row:
    """One metric of one group in both runs, and the verdict."""

    metric: str
    group: dict[str, Any]
    baseline: list[float]
    current: list[float]
    direction: int
    machine_independent: bool
    threshold: float
    verdict: str  # better | worse | unchanged | not comparable
    ratio: float | None = None
    p_value: float | None = None
    note: str = ""
    gating: bool = True

    @property
    def name(self) -> str:
        return "/".join(str(self.group.get(k, "*")) for k in GROUP_KEYS)

    @property
    def regressed(self) -> bool:
        return self.gating and self.verdict == "worse"


@dataclass
class Comparison:
    baseline: str
    current: str
    rows: list[Row]
    warnings: list[str] = field(default_factory=list)
    alpha: float = DEFAULT_ALPHA

    @property
    def regressions(self) -> list[Row]:
        return [r for r in self.rows if r.regressed]


def load_summary(path: str | Path) -> dict[str, Any]:
    """A run directory or its summary.json, validated; raise CompareInputError otherwise."""
    path = Path(path)
    file = path / "summary.json" if path.is_dir() else path
    if not file.is_file():
        hint = " (run `clusterlab report DIR` first)" if (path / "meta.json").is_file() else ""
        raise CompareInputError(f"{path}: expected a run directory or summary.json, got none{hint}")
    try:
        data = json.loads(file.read_text())
        jsonschema.validate(data, summary_schema())
    except (OSError, ValueError) as exc:
        raise CompareInputError(f"{file}: expected a clusterlab summary.json, got {exc}") from None
    except jsonschema.ValidationError as exc:
        where = "/".join(map(str, exc.absolute_path)) or "(top level)"
        raise CompareInputError(f"{file}: {where}: {exc.message}") from None
    result: dict[str, Any] = data
    return result


def min_p_value(n1: int, n2: int) -> float:
    """Smallest two-sided p-value the exact Mann–Whitney U test can give at these sizes."""
    if n1 < 1 or n2 < 1:
        return 1.0
    return min(1.0, 2 / math.comb(n1 + n2, n1))


def judge(
    baseline: list[float],
    current: list[float],
    direction: int,
    threshold: float = DEFAULT_THRESHOLD,
    alpha: float = DEFAULT_ALPHA,
) -> tuple[str, float | None, float | None, str]:
    """(verdict, ratio current/baseline of the medians, p-value, note) for two samples."""
    b = [v for v in baseline if math.isfinite(v)]
    c = [v for v in current if math.isfinite(v)]
    if not b or not c:
        return "not comparable", None, None, "missing in one run"
    mb, mc = statistics.median(b), statistics.median(c)
    if mb == 0 and mc == 0:
        ratio: float = 1.0
    elif mb == 0:
        ratio = math.inf
    else:
        ratio = mc / mb
    if min_p_value(len(b), len(c)) >= alpha:
        return "not comparable", ratio, None, f"insufficient repeats ({len(b)} vs {len(c)})"
    if b == c or (len(set(b)) == 1 and set(b) == set(c)):
        return "unchanged", ratio, 1.0, ""
    # exact permutation distribution (ties allowed: p99 values are whole milliseconds); above
    # 20 000 arrangements a seeded Monte Carlo estimate of it
    method = stats.PermutationMethod(n_resamples=20_000, rng=0)
    p = float(stats.mannwhitneyu(b, c, alternative="two-sided", method=method).pvalue)
    factor = 1 + threshold
    beyond_up, beyond_down = ratio > factor, ratio < 1 / factor
    if not (beyond_up or beyond_down):
        return "unchanged", ratio, p, ""
    if p >= alpha:
        return "unchanged", ratio, p, f"~ beyond threshold but not significant (p={p:.3g})"
    worse = beyond_down if direction > 0 else beyond_up
    return ("worse" if worse else "better"), ratio, p, ""


def _samples(members: list[dict[str, Any]], metric: str) -> dict[int, float]:
    return {int(p["repeat"]): point_value(p, metric) for p in members}


def metric_samples(summary: dict[str, Any]) -> dict[tuple[str, tuple[Any, ...]], list[float]]:
    """(metric, group key) → per-repeat values, for the compared and the derived metrics."""
    grouped = groups(summary["points"])
    out: dict[tuple[str, tuple[Any, ...]], list[float]] = {}
    rps = {key: _samples(members, "rps") for key, members in grouped.items()}
    for key, members in grouped.items():
        for metric in COMPARED:
            out[(metric, key)] = list(_samples(members, metric).values())
    for (workload, policy, workers), by_repeat in rps.items():
        smallest = min(w for (wl, po, w) in rps if wl == workload and po == policy)
        if workers != smallest and workers > 0:
            base = rps[(workload, policy, smallest)]
            out[("scaling_efficiency", (workload, policy, workers))] = [
                v / (workers / smallest * base[r])
                for r, v in by_repeat.items()
                if r in base and base[r] > 0
            ]
        if policy == "rr" and (workload, "none", workers) in rps:
            none = rps[(workload, "none", workers)]
            out[("rr_none_ratio", (workload, "rr/none", workers))] = [
                v / none[r] for r, v in by_repeat.items() if r in none and none[r] > 0
            ]
    return out


def other_cpu(summary: dict[str, Any]) -> float:
    """Median CPU (% of one core) used by processes outside the run during the windows."""
    values = [
        float(p["cpu_pct"]["other"])
        for p in summary["points"]
        if isinstance(p.get("cpu_pct", {}).get("other"), int | float)
    ]
    return statistics.median(values) if values else 0.0


def machine_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The machine facts that differ between two runs' summaries."""
    return [
        f"{k}: {a['machine'].get(k)!r} vs {b['machine'].get(k)!r}"
        for k in MACHINE_FACTS
        if a["machine"].get(k) != b["machine"].get(k)
    ]


def compare(
    baseline: dict[str, Any],
    current: dict[str, Any],
    thresholds: dict[str, float] | None = None,
    default_threshold: float = DEFAULT_THRESHOLD,
    alpha: float = DEFAULT_ALPHA,
    names: tuple[str, str] = ("baseline", "current"),
) -> Comparison:
    """Compare two validated summaries; see the module docstring for the rules."""
    thresholds = thresholds or {}
    warnings = []
    machine_diff = machine_differences(baseline, current)
    if machine_diff:
        warnings.append(
            "different machines (" + "; ".join(machine_diff) + "): only the machine-independent "
            "ratios (scaling efficiency, rr/none, fairness, failure ratio) gate"
        )
    scenario_diff = _scenario_differences(baseline["scenario"], current["scenario"])
    if scenario_diff:
        warnings.append("scenarios differ in " + ", ".join(scenario_diff))
    for name, summary in zip(names, (baseline, current), strict=True):
        if summary["run"]["partial"]:
            warnings.append(f"{name} run is partial")
        other = other_cpu(summary)
        if other > NOISY_OTHER_CPU:
            warnings.append(
                f"{name} run was noisy: processes outside the run used {other:.0f} % of a core "
                "(median); changes are harder to prove"
            )
    b, c = metric_samples(baseline), metric_samples(current)
    rows = []
    for metric, key in list(b) + [k for k in c if k not in b]:
        independent = COMPARED.get(metric, True)
        direction = DERIVED.get(metric) or METRICS[metric][2]
        threshold = thresholds.get(metric, default_threshold)
        verdict, ratio, p, note = judge(
            b.get((metric, key), []), c.get((metric, key), []), direction, threshold, alpha
        )
        gating = independent or not machine_diff
        if not gating:
            note = (note + "; " if note else "") + "other machine: information only"
        rows.append(
            Row(
                metric=metric,
                group=dict(zip(GROUP_KEYS, key, strict=True)),
                baseline=b.get((metric, key), []),
                current=c.get((metric, key), []),
                direction=direction,
                machine_independent=independent,
                threshold=threshold,
                verdict=verdict,
                ratio=ratio,
                p_value=p,
                note=note,
                gating=gating,
            )
        )
    if rows and all(r.verdict == "not comparable" for r in rows):
        warnings.append("nothing could be judged: more repeats are needed (see the notes)")
    return Comparison(names[0], names[1], rows, warnings, alpha)


def _scenario_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    skip = {"name", "path", "description", "report", "gates"}
    return [k for k in sorted(set(a) | set(b)) if k not in skip and a.get(k) != b.get(k)]
