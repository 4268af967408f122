"""Calibration: per-metric thresholds measured on the CI host, ``clusterlab calibrate``.

``clusterlab calibrate SCENARIO --name NAME [--pairs 2]`` runs the scenario 2 × pairs times, as
pairs A, A' of identical runs (A/A), and compares each pair as ``compare`` would. For every
metric and group, the **noise** is the largest distance from 1 of an A/A pair's interval (the
95 % bootstrap interval of the ratio of medians), as a threshold: max(high, 1/low) − 1. That is
the threshold this pair would just have been "unchanged" under. The calibrated threshold is

    threshold = max(floor, k × noise),   k = 2, floor = 5 %

Why k = 2: an A/A interval reaches about its half-width plus the offset of its ratio from 1, and
the offset itself varies by up to about one half-width (95 %), so a later A/A interval can reach
twice as far as a calibration pair that happened to land near 1. Simulated with normal noise, 8
repeats a side and 2 pairs, a later A/A row falls outside 2 × the calibrated noise in about
0.5 % of cases (1.5 × leaves 5 %, which over five gated metrics makes one A/A compare in four
inconclusive; with 1 pair, k = 2 leaves 3.5–5 %, hence 2 pairs by default). Why a floor of 5 %:
below it, drift between runs that the repeats within a run do not see (CPU frequency, caches, a
neighbour VM) decides, and a calibration from two quiet pairs would promise more than the host
keeps. The metric's threshold (used for a group that was not calibrated) is the largest of its
groups'.

The first run is saved as baseline NAME (``ci/baseline.py``) with ``thresholds.json`` beside its
summary; ``compare NAME CURRENT`` uses those thresholds and says so. Calibration refuses (exit 3,
nothing saved) when a pair has untrusted points: noise measured on a busy machine, or on points
the target did not limit, is not the noise of the host. A metric or group whose A/A rows are not
comparable (too few repeats) or infinite (zero in one run) is listed and keeps the default.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clusterlab.lab.ci.compare import (
    DEFAULT_ALPHA,
    DEFAULT_MAX_OTHER_CPU,
    RESAMPLES,
    CompareInputError,
    Comparison,
    compare,
)

if TYPE_CHECKING:
    from clusterlab.lab.config.scenario import Scenario
    from clusterlab.lab.running.runner import Progress

K = 2.0
FLOOR = 0.05
DEFAULT_PAIRS = 2
FILE = "thresholds.json"
SCHEMA = "clusterlab.lab.thresholds"
VERSION = 1
NOISE = (
    "largest distance from 1 of an A/A pair's bootstrap interval of the ratio of medians: "
    "max(high, 1/low) - 1"
)


@dataclass
class Calibration:
    """The outcome of calibrating from A/A pairs: thresholds.json's content, or why not."""

    data: dict[str, Any]
    pairs: list[Comparison]
    refused: list[str] = field(default_factory=list)  # why nothing may be saved

    @property
    def ok(self) -> bool:
        return not self.refused


def noise(interval: tuple[float, float]) -> float:
    """The threshold an A/A interval would just fit inside: max(high, 1/low) − 1."""
    low, high = interval
    return max(high, 1 / low if low > 0 else math.inf) - 1


def calibrate_from(
    summaries: list[dict[str, Any]],
    names: list[str],
    k: float = K,
    floor: float = FLOOR,
    alpha: float = DEFAULT_ALPHA,
    max_other_cpu: float = DEFAULT_MAX_OTHER_CPU,
) -> Calibration:
    """Thresholds from recorded A/A runs taken in pairs (A, A', A, A', ...)."""
    if len(summaries) < 2 or len(summaries) % 2:
        raise CompareInputError(
            f"calibrate: expected runs in A/A pairs (an even number, at least 2), "
            f"got {len(summaries)}"
        )
    pairs = [
        compare(
            summaries[i],
            summaries[i + 1],
            alpha=alpha,
            names=(names[i], names[i + 1]),
            max_other_cpu=max_other_cpu,
        )
        for i in range(0, len(summaries), 2)
    ]
    refused = [f"pair {n + 1}: {w}" for n, pair in enumerate(pairs) for w in pair.warnings]
    for n, pair in enumerate(pairs):
        run = {"baseline": names[2 * n], "current": names[2 * n + 1]}
        refused += [
            f"{run[d.run]} {d.name} r{d.repeat}: {'; '.join(d.reasons)}" for d in pair.untrusted
        ]
    metrics, skipped = _thresholds(pairs, k, floor)
    if not metrics:
        refused.append("no metric could be calibrated: " + "; ".join(skipped[:3]))
    data = {
        "schema": SCHEMA,
        "version": VERSION,
        "created": time.time(),
        "scenario": summaries[0]["scenario"].get("name"),
        "machine": summaries[0]["machine"],
        "rule": {
            "threshold": "max(floor, k * noise)",
            "k": k,
            "floor": floor,
            "noise": NOISE,
            "confidence": 1 - alpha,
            "resamples": RESAMPLES,
        },
        "pairs": [[names[i], names[i + 1]] for i in range(0, len(names), 2)],
        "metrics": metrics,
        "not_calibrated": skipped,
    }
    return Calibration(data, pairs, refused)


def _thresholds(
    pairs: list[Comparison], k: float, floor: float
) -> tuple[dict[str, Any], list[str]]:
    found: dict[str, dict[str, list[float]]] = {}
    skipped = []
    for pair in pairs:
        for row in pair.rows:
            if row.interval is None or not math.isfinite(noise(row.interval)):
                why = row.note or "interval unbounded (zero in one run)"
                skipped.append(f"{row.metric} {row.name}: {why}")
                continue
            found.setdefault(row.metric, {}).setdefault(row.name, []).append(noise(row.interval))
    metrics: dict[str, Any] = {}
    for metric, by_group in found.items():
        groups = {
            name: {
                "noise": round(max(values), 5),
                "threshold": round(max(floor, k * max(values)), 4),
                "pairs": len(values),
            }
            for name, values in by_group.items()
            if len(values) == len(pairs)
        }
        if groups:
            metrics[metric] = {
                "noise": max(g["noise"] for g in groups.values()),
                "threshold": max(g["threshold"] for g in groups.values()),
                "groups": groups,
            }
    return metrics, list(dict.fromkeys(skipped))


def lookup(data: dict[str, Any]) -> dict[str, dict[str, float]]:
    """metric → {group name: threshold, "*": the metric's}, as ``compare`` takes them."""
    out: dict[str, dict[str, float]] = {}
    for metric, entry in data.get("metrics", {}).items():
        out[metric] = {"*": float(entry["threshold"])}
        for name, group in entry.get("groups", {}).items():
            out[metric][name] = float(group["threshold"])
    return out


def describe(data: dict[str, Any], where: str | Path) -> str:
    rule = data["rule"]
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(data["created"]))
    return (
        f"{where}, {len(data['pairs'])} A/A pair(s) of {when}, "
        f"max({rule['floor']:.0%} floor, {rule['k']:g} × noise)"
    )


def read(path: Path) -> dict[str, Any]:
    """A thresholds.json, checked enough to use; CompareInputError otherwise."""
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        if data.get("schema") != SCHEMA:
            raise ValueError(f"schema {data.get('schema')!r}")
        lookup(data)
        describe(data, path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CompareInputError(f"{path}: expected a clusterlab {FILE}, got {exc}") from None
    return data


def beside(summary_path: Path) -> Path | None:
    """The thresholds.json stored with a baseline (a folder or its summary.json), if any."""
    folder = summary_path if summary_path.is_dir() else summary_path.parent
    file = folder / FILE
    return file if file.is_file() else None


def run_pairs(
    scenario: Scenario, out: Path, pairs: int, progress: Progress
) -> tuple[list[Path], bool]:
    """Run the scenario 2 × ``pairs`` times into ``out``/a1, a1-again, a2, ... ; (run
    directories, whether every run completed without failed points)."""
    from clusterlab.lab.pipeline import run_lab

    out.mkdir(parents=True)
    dirs: list[Path] = []
    complete = True
    for n in range(1, pairs + 1):
        for suffix in ("", "-again"):
            lab = run_lab(scenario, out / f"a{n}{suffix}", progress)
            dirs.append(lab.out_dir)
            complete = complete and not (lab.outcome.interrupted or lab.outcome.failed)
            if lab.outcome.interrupted:
                return dirs, False
    return dirs, complete


def table(calibration: Calibration) -> list[list[Any]]:
    """Rows of metric, group, the A/A intervals, noise and threshold, for the terminal."""
    rows: list[list[Any]] = []
    intervals: dict[tuple[str, str], list[str]] = {}
    for pair in calibration.pairs:
        for row in pair.rows:
            if row.interval is not None:
                lo, hi = row.interval
                intervals.setdefault((row.metric, row.name), []).append(f"{lo:.3f}–{hi:.3f}")
    for metric, entry in calibration.data["metrics"].items():
        for name, group in entry["groups"].items():
            rows.append(
                [
                    metric,
                    name,
                    ", ".join(intervals.get((metric, name), [])),
                    f"{group['noise']:.1%}",
                    f"{group['threshold']:.1%}",
                ]
            )
    return rows
