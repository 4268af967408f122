"""Regression comparison of two runs: ``clusterlab compare BASELINE CURRENT``.

A comparison ends in one of three outcomes (and exit statuses): **unchanged** (0: every gated row
was judged and none got worse), **regression** (1: a gated row is worse beyond its threshold) or
**inconclusive** (3: no regression was found, but a gated row could not be judged). Bad input is 2.
A regression wins over inconclusive when both occur. A row that cannot be judged never counts as
passing, and the headline never says "no regression" while one exists.

Rows. For every metric and workload × policy × workers group, the per-repeat samples of both runs
are compared. The effect is the ratio current / baseline of the medians over the repeats, with a
**bootstrap percentile interval** (95 % by default, ``alpha`` = 0.05): repeats are resampled with
replacement within each run, ``RESAMPLES`` (10 000) times with a fixed seed (the same input always
gives the same output), and the 2.5th and 97.5th percentiles of the resampled ratios are the
interval. The verdict is taken on the interval against the metric's threshold t (a factor: the
bounds are 1/(1+t) and 1+t):

* wholly beyond the bound on the worse side → **worse** (a regression when the row gates);
* wholly beyond the bound on the better side → **better**;
* wholly inside the bounds → **unchanged**;
* across a bound → **inconclusive** (either side: the data cannot say which side it is on);
* fewer than ``MIN_REPEATS`` (5) finite repeats on a side, or missing → **not comparable**. The
  percentile interval of a median can only take sample values; with n repeats it is about their
  range, which covers the true median with probability 1 − 2^(1−n): 75 % at 3, 94 % at 5. Below 5
  the interval would claim more than the repeats know.
* a point behind the row that is untrusted (below) → **untrusted**, whatever the interval says
  (the note tells what it said).

The two-sided Mann–Whitney U p-value of the repeats is printed beside the interval as information
(exact permutation distribution, ties allowed); it decides nothing. (Earlier versions gated on
p < 0.01; with 5 + 5 repeats the smallest attainable p is 0.0079, so one overlapping repeat turned
a real change into "unchanged".)

Untrusted points. A point's numbers are trusted only when the point was limited by the target
(summary ``verdict`` "target") and processes outside the run used at most ``max_other_cpu`` (25 %
of a core by default, ``--max-other-cpu``) over its window. A point without a verdict (summary
version 1–2) is untrusted ("record the baseline again"), and so is a failed point. Every row a
point feeds, in both runs' rows, is untrusted; the comparison lists the points and why.

Thresholds: ``--threshold`` per metric, else the calibrated thresholds stored with a named
baseline (``clusterlab calibrate``, ``calibrate.py``), per metric and group, else 10 %. A
calibrated threshold only ever tightens the default (10 %, or ``--threshold PCT``): one above it is
**capped** at it (source "capped", and a warning names the groups). Calibration measures how far
A/A intervals reach on this host; a threshold widened past the default would turn a change the
user asked to catch (a 10 % slowdown under an 11 % calibrated threshold) into "unchanged". Capped,
such a row comes out regression or inconclusive — the host is too noisy to say "unchanged" at that
size — and more repeats, or an explicit ``--threshold METRIC=PCT``, are the ways to widen it.

Machine-independent ratios are compared too: scaling efficiency (rps at n workers / (n/n_min ×
rps at the smallest count), paired by repeat), the rr/none throughput ratio (paired by repeat),
fairness (Jain's index) and the failure ratio. When the machine facts of the two runs differ the
comparison warns and only those ratios gate; absolute numbers are shown for information.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np

from clusterlab.lab.analysis.summary import NOISY_OTHER_CPU
from clusterlab.lab.analysis.summary import schema as summary_schema
from clusterlab.lab.ci.gates import groups, point_value
from clusterlab.lab.config.gates import GROUP_KEYS, METRICS

DEFAULT_THRESHOLD = 0.10
#: The interval is the 100 × (1 − alpha) % percentile interval.
DEFAULT_ALPHA = 0.05
RESAMPLES = 10_000
SEED = 0
MIN_REPEATS = 5
DEFAULT_MAX_OTHER_CPU = NOISY_OTHER_CPU
TRUSTED_VERDICT = "target"
EXIT_STATUS = {"unchanged": 0, "regression": 1, "inconclusive": 3}
JUDGED = ("worse", "better", "unchanged")
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

GroupKey = tuple[Any, ...]


class CompareInputError(ValueError):
    """A file or directory that cannot be compared; the message is one line for the user."""


@dataclass(frozen=True)
class Judgement:
    """What the repeats of one metric say: verdict, ratio of medians, its interval, p, note."""

    verdict: str  # better | worse | unchanged | inconclusive | not comparable
    ratio: float | None = None
    interval: tuple[float, float] | None = None
    p_value: float | None = None
    note: str = ""


@dataclass(frozen=True)
class Distrust:
    """One untrusted point of one run, and why."""

    run: str
    key: GroupKey
    repeat: int
    kinds: tuple[str, ...]  # short: "outside CPU", "verdict generator", "no verdict", "failed"
    reasons: tuple[str, ...]  # sentences

    @property
    def name(self) -> str:
        return "/".join(map(str, self.key))


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
    verdict: str  # better | worse | unchanged | inconclusive | not comparable | untrusted
    ratio: float | None = None
    p_value: float | None = None
    note: str = ""
    gating: bool = True
    interval: tuple[float, float] | None = None
    threshold_source: str = "default"  # default | calibrated | capped | --threshold
    untrusted: tuple[str, ...] = ()  # "current r0–r4 (outside CPU)", ...

    @property
    def name(self) -> str:
        return "/".join(str(self.group.get(k, "*")) for k in GROUP_KEYS)

    @property
    def regressed(self) -> bool:
        return self.gating and self.verdict == "worse"

    @property
    def undecided(self) -> bool:
        """A gated row that could not be judged: it makes the comparison inconclusive."""
        return self.gating and self.verdict not in JUDGED

    @property
    def reason(self) -> str:
        """Why the row could not be judged (kind of reason, shared by rows alike)."""
        if self.verdict == "untrusted":
            return "untrusted points"
        if self.verdict == "inconclusive":
            return "interval across the threshold"
        return self.note.split(" (")[0] if self.note else "not comparable"


@dataclass
class Comparison:
    baseline: str
    current: str
    rows: list[Row]
    warnings: list[str] = field(default_factory=list)
    alpha: float = DEFAULT_ALPHA
    untrusted: list[Distrust] = field(default_factory=list)
    max_other_cpu: float = DEFAULT_MAX_OTHER_CPU
    calibration: str = ""  # where calibrated thresholds came from, when any were used

    @property
    def regressions(self) -> list[Row]:
        return [r for r in self.rows if r.regressed]

    @property
    def undecided(self) -> list[Row]:
        return [r for r in self.rows if r.undecided]

    @property
    def gated(self) -> list[Row]:
        return [r for r in self.rows if r.gating]

    @property
    def outcome(self) -> str:
        """regression | inconclusive | unchanged (see the module docstring)."""
        if self.regressions:
            return "regression"
        if self.undecided or not self.gated:
            return "inconclusive"
        return "unchanged"

    @property
    def exit_status(self) -> int:
        return EXIT_STATUS[self.outcome]

    @property
    def confidence(self) -> float:
        return 1 - self.alpha


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


def _ratios(base: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """cur / base elementwise, with 0/0 = 1 and x/0 = ∞."""
    safe = np.where(base == 0, 1.0, base)
    return np.where(base == 0, np.where(cur == 0, 1.0, np.inf), cur / safe)


def ratio_of_medians(baseline: list[float], current: list[float]) -> float:
    return float(
        _ratios(np.array([statistics.median(baseline)]), np.array([statistics.median(current)]))[0]
    )


def bootstrap_interval(
    baseline: list[float],
    current: list[float],
    alpha: float = DEFAULT_ALPHA,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> tuple[float, float]:
    """Percentile interval (1 − alpha) of the ratio of medians current / baseline: each run's
    repeats resampled with replacement ``resamples`` times (numpy, seeded: deterministic)."""
    rng = np.random.default_rng(seed)
    b, c = np.asarray(baseline, dtype=float), np.asarray(current, dtype=float)
    mb = np.median(b[rng.integers(0, len(b), size=(resamples, len(b)))], axis=1)
    mc = np.median(c[rng.integers(0, len(c), size=(resamples, len(c)))], axis=1)
    ratios = np.sort(_ratios(mb, mc))
    low = int(math.floor(alpha / 2 * resamples))
    high = int(math.ceil((1 - alpha / 2) * resamples)) - 1
    return float(ratios[low]), float(ratios[high])


def mann_whitney_p(baseline: list[float], current: list[float]) -> float:
    """Two-sided Mann–Whitney U p-value: the exact permutation distribution (ties allowed:
    p99 values are whole milliseconds); above 20 000 arrangements a seeded Monte Carlo one."""
    if baseline == current or (len(set(baseline)) == 1 and set(baseline) == set(current)):
        return 1.0
    from scipy import stats  # here, not at the top: 1-2 s to import, and most commands never test

    method = stats.PermutationMethod(n_resamples=20_000, rng=0)
    return float(
        stats.mannwhitneyu(baseline, current, alternative="two-sided", method=method).pvalue
    )


def judge(
    baseline: list[float],
    current: list[float],
    direction: int,
    threshold: float = DEFAULT_THRESHOLD,
    alpha: float = DEFAULT_ALPHA,
) -> Judgement:
    """The verdict on two samples of a metric (``direction`` +1: higher is better), taken on the
    bootstrap interval of the ratio of medians against ``threshold``."""
    b = [v for v in baseline if math.isfinite(v)]
    c = [v for v in current if math.isfinite(v)]
    if not b or not c:
        return Judgement("not comparable", note="missing in one run")
    ratio = ratio_of_medians(b, c)
    if min(len(b), len(c)) < MIN_REPEATS:
        return Judgement(
            "not comparable",
            ratio,
            note=f"insufficient repeats ({len(b)} vs {len(c)}; an interval needs "
            f"{MIN_REPEATS} a side)",
        )
    low, high = bootstrap_interval(b, c, alpha)
    p = mann_whitney_p(b, c)
    factor = 1 + threshold
    if low >= 1 / factor and high <= factor:
        return Judgement("unchanged", ratio, (low, high), p)
    if high < 1 / factor or low > factor:
        worse = (high < 1 / factor) == (direction > 0)
        return Judgement("worse" if worse else "better", ratio, (low, high), p)
    bound = 1 / factor if low < 1 / factor else factor
    side = "worse" if (bound < 1) == (direction > 0) else "better"
    return Judgement(
        "inconclusive",
        ratio,
        (low, high),
        p,
        f"interval across the {side} bound {bound:.3f} (threshold {threshold:.1%})",
    )


def _samples(members: list[dict[str, Any]], metric: str) -> dict[int, float]:
    return {int(p["repeat"]): point_value(p, metric) for p in members}


def metric_samples(summary: dict[str, Any]) -> dict[tuple[str, GroupKey], list[float]]:
    """(metric, group key) → per-repeat values, for the compared and the derived metrics."""
    grouped = groups(summary["points"])
    out: dict[tuple[str, GroupKey], list[float]] = {}
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


def row_sources(metric: str, key: GroupKey, keys: Iterable[GroupKey]) -> list[GroupKey]:
    """The groups whose points feed the row (metric, key)."""
    workload, policy, workers = key
    if metric == "rr_none_ratio":
        return [(workload, "rr", workers), (workload, "none", workers)]
    if metric == "scaling_efficiency":
        counts = [w for (wl, po, w) in keys if wl == workload and po == policy]
        return [key, (workload, policy, min(counts, default=workers))]
    return [key]


def point_distrust(
    point: Mapping[str, Any], version: Any, max_other_cpu: float = DEFAULT_MAX_OTHER_CPU
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(short kinds, reasons) why a summary point's numbers are not to be trusted; empty when
    they are."""
    if point.get("status") != "ok":
        return ("failed",), (f"point failed: {point.get('error') or 'no error recorded'}",)
    kinds: list[str] = []
    reasons: list[str] = []
    if "verdict" not in point:
        kinds.append("no verdict")
        reasons.append(
            f"no saturation verdict recorded (summary v{version}): record the baseline again"
        )
    elif point["verdict"] != TRUSTED_VERDICT:
        kinds.append(f"verdict {point['verdict']}")
        why = point.get("verdict_reason") or "no reason recorded"
        reasons.append(f"not target-bound: verdict {point['verdict']!r} ({why})")
    other = (point.get("cpu_pct") or {}).get("other")
    if isinstance(other, int | float) and not isinstance(other, bool) and other > max_other_cpu:
        kinds.append("outside CPU")
        reasons.append(f"outside CPU {other:.0f} % of a core (limit {max_other_cpu:g} %)")
    return tuple(kinds), tuple(reasons)


def untrusted_points(
    summary: dict[str, Any], run: str, max_other_cpu: float = DEFAULT_MAX_OTHER_CPU
) -> list[Distrust]:
    """Every untrusted point of a run, in run order."""
    out = []
    for point in summary["points"]:
        kinds, reasons = point_distrust(point, summary.get("schema_version"), max_other_cpu)
        if kinds:
            key = tuple(point[k] for k in GROUP_KEYS)
            out.append(Distrust(run, key, int(point["repeat"]), kinds, reasons))
    return out


def repeats_text(repeats: Iterable[int]) -> str:
    """``r0–r4, r7`` for repeats 0, 1, 2, 3, 4, 7."""
    spans: list[list[int]] = []
    for r in sorted(set(repeats)):
        if spans and r == spans[-1][1] + 1:
            spans[-1][1] = r
        else:
            spans.append([r, r])
    return ", ".join(f"r{a}" if a == b else f"r{a}–r{b}" for a, b in spans)


def _row_distrust(distrusted: list[Distrust], sources: list[GroupKey]) -> tuple[str, ...]:
    """Short descriptions, per run, of the untrusted points behind a row."""
    out = []
    for run in dict.fromkeys(d.run for d in distrusted):
        mine = [d for d in distrusted if d.run == run and d.key in sources]
        if mine:
            kinds = ", ".join(dict.fromkeys(k for d in mine for k in d.kinds))
            names = {d.name for d in mine}
            where = "" if len(sources) == 1 else " ".join(sorted(names)) + " "
            out.append(f"{run} {where}{repeats_text(d.repeat for d in mine)} ({kinds})")
    return tuple(out)


def machine_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The machine facts that differ between two runs' summaries."""
    return [
        f"{k}: {a['machine'].get(k)!r} vs {b['machine'].get(k)!r}"
        for k in MACHINE_FACTS
        if a["machine"].get(k) != b["machine"].get(k)
    ]


def threshold_for(
    metric: str,
    name: str,
    explicit: Mapping[str, float],
    calibrated: Mapping[str, Mapping[str, float]],
    default: float,
) -> tuple[float, str]:
    """(threshold, source): ``--threshold METRIC=``, else the calibrated one of the group (or of
    the metric, key "*") capped at the default, else the default."""
    if metric in explicit:
        return explicit[metric], "--threshold"
    mine = calibrated.get(metric, {})
    for key in (name, "*"):
        if key in mine:
            return (mine[key], "calibrated") if mine[key] <= default else (default, "capped")
    return default, "default"


def capped_warning(capped: list[tuple[str, str, float]], default: float) -> str:
    """One line naming the calibrated thresholds that were capped at the default."""
    listed = ", ".join(f"{metric} {name} {value:.1%}" for metric, name, value in capped[:6])
    more = f" and {len(capped) - 6} more" if len(capped) > 6 else ""
    return (
        f"calibrated thresholds above the {default:.0%} default were capped at it ({listed}{more}):"
        " this host's noise can leave those rows inconclusive; more repeats narrow the intervals,"
        " --threshold METRIC=PCT sets a wider one explicitly"
    ).replace("%", " %")


def parse_thresholds(texts: Iterable[str]) -> tuple[float | None, dict[str, float]]:
    """``--threshold [METRIC=]PCT`` options → (default or None, metric → threshold as a
    fraction); ValueError naming the option that is wrong."""
    default: float | None = None
    out: dict[str, float] = {}
    for text in texts:
        metric, _, pct = text.rpartition("=")
        try:
            value = float(pct.rstrip("%").strip()) / 100
        except ValueError:
            value = math.nan
        if not 0 <= value < 10 or (metric and metric not in {*COMPARED, *DERIVED}):
            raise ValueError(
                f"--threshold: expected [METRIC=]PERCENT with METRIC one of "
                f"{', '.join([*COMPARED, *DERIVED])}, got {text!r}"
            )
        if metric:
            out[metric] = value
        else:
            default = value
    return default, out


def _warnings(
    baseline: dict[str, Any],
    current: dict[str, Any],
    names: tuple[str, str],
    machine_diff: list[str],
) -> list[str]:
    warnings = []
    if machine_diff:
        warnings.append(
            "different machines (" + "; ".join(machine_diff) + "): only the machine-independent "
            "ratios (scaling efficiency, rr/none, fairness, failure ratio) gate"
        )
    scenario_diff = scenario_differences(baseline["scenario"], current["scenario"])
    if scenario_diff:
        warnings.append("scenarios differ in " + ", ".join(scenario_diff))
    for name, summary in zip(names, (baseline, current), strict=True):
        if summary["run"]["partial"]:
            warnings.append(f"{name} run is partial")
    return warnings


def compare(
    baseline: dict[str, Any],
    current: dict[str, Any],
    thresholds: Mapping[str, float] | None = None,
    default_threshold: float = DEFAULT_THRESHOLD,
    alpha: float = DEFAULT_ALPHA,
    names: tuple[str, str] = ("baseline", "current"),
    calibrated: Mapping[str, Mapping[str, float]] | None = None,
    max_other_cpu: float = DEFAULT_MAX_OTHER_CPU,
    calibration: str = "",
) -> Comparison:
    """Compare two validated summaries; see the module docstring for the rules. ``thresholds``
    are explicit per-metric ones; ``calibrated`` metric → {group name or "*": threshold}, read
    from ``calibration`` (a description for the output)."""
    machine_diff = machine_differences(baseline, current)
    warnings = _warnings(baseline, current, names, machine_diff)
    distrusted = [
        *untrusted_points(baseline, "baseline", max_other_cpu),
        *untrusted_points(current, "current", max_other_cpu),
    ]
    b, c = metric_samples(baseline), metric_samples(current)
    keys = list(dict.fromkeys(k for _, k in [*b, *c]))
    rows = []
    capped: list[tuple[str, str, float]] = []
    for metric, key in list(b) + [k for k in c if k not in b]:
        group = dict(zip(GROUP_KEYS, key, strict=True))
        name = "/".join(map(str, key))
        threshold, source = threshold_for(
            metric, name, thresholds or {}, calibrated or {}, default_threshold
        )
        if source == "capped":
            mine = (calibrated or {})[metric]
            capped.append((metric, name, mine.get(name, mine.get("*", threshold))))
        rows.append(
            _row(
                metric,
                group,
                (b.get((metric, key), []), c.get((metric, key), [])),
                (threshold, source),
                alpha,
                _row_distrust(distrusted, row_sources(metric, key, keys)),
                not machine_diff,
            )
        )
    if capped:
        warnings.append(capped_warning(capped, default_threshold))
    if not any(r.threshold_source in ("calibrated", "capped") for r in rows):
        calibration = ""
    return Comparison(
        names[0], names[1], rows, warnings, alpha, distrusted, max_other_cpu, calibration
    )


def _row(
    metric: str,
    group: dict[str, Any],
    samples: tuple[list[float], list[float]],
    threshold: tuple[float, str],
    alpha: float,
    untrusted: tuple[str, ...],
    same_machine: bool,
) -> Row:
    independent = COMPARED.get(metric, True)
    direction = DERIVED.get(metric) or METRICS[metric][2]
    judged = judge(samples[0], samples[1], direction, threshold[0], alpha)
    verdict, note = judged.verdict, judged.note
    if untrusted:
        said = f"; the interval alone says {verdict}" if judged.interval else f"; {note}"
        verdict, note = "untrusted", "untrusted: " + "; ".join(untrusted) + said
    gating = independent or same_machine
    if not gating:
        note = (note + "; " if note else "") + "other machine: information only"
    return Row(
        metric=metric,
        group=group,
        baseline=samples[0],
        current=samples[1],
        direction=direction,
        machine_independent=independent,
        threshold=threshold[0],
        verdict=verdict,
        ratio=judged.ratio,
        p_value=judged.p_value,
        note=note,
        gating=gating,
        interval=judged.interval,
        threshold_source=threshold[1],
        untrusted=untrusted,
    )


def scenario_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    skip = {"name", "path", "description", "report", "gates"}
    return [k for k in sorted(set(a) | set(b)) if k not in skip and a.get(k) != b.get(k)]
