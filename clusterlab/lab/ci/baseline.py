"""Named baselines: a run's summary.json kept under a name, with the machine facts it was measured
on, so later runs can be compared with ``clusterlab compare NAME CURRENT``.

Stored as ``<store>/<NAME>/summary.json`` and ``<store>/<NAME>/baseline.json`` (name, saved
time, source directory, machine facts), and ``<store>/<NAME>/thresholds.json`` when the baseline
was calibrated (``clusterlab calibrate``, ``calibrate.py``). Saving a new run under a calibrated
name keeps its thresholds when the scenario and the machine are the same (the noise they measure
is the host's), and drops them otherwise. The store is ``$CLUSTERLAB_BASELINES`` or
``.clusterlab/baselines`` under the current directory; commit it, or cache it in CI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from clusterlab.lab.ci import calibrate
from clusterlab.lab.ci.compare import (
    CompareInputError,
    Comparison,
    compare,
    load_summary,
    machine_differences,
    scenario_differences,
)
from clusterlab.lab.output.text import fmt, plain_table

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def store() -> Path:
    return Path(os.environ.get("CLUSTERLAB_BASELINES", ".clusterlab/baselines"))


def _folder(name: str) -> Path:
    if not _NAME.match(name) or name in (".", ".."):
        raise CompareInputError(
            f"baseline name: expected letters, digits, '_', '.' or '-', got {name!r}"
        )
    return store() / name


def check_name(name: str) -> None:
    """CompareInputError unless ``name`` can name a baseline."""
    _folder(name)


def save(name: str, run: str | Path, thresholds: dict[str, Any] | None = None) -> Path:
    """Keep the run's validated summary as baseline ``name`` (replacing an older one), with
    calibrated ``thresholds`` (thresholds.json's content) when given; otherwise an older
    baseline's thresholds are kept when its scenario and machine are the same."""
    summary = load_summary(run)
    folder = _folder(name)
    if thresholds is None:
        thresholds = _kept_thresholds(folder, summary)
    tmp = folder.with_name(f".{name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
    if thresholds is not None:
        (tmp / calibrate.FILE).write_text(json.dumps(thresholds, indent=2))
    info = {"name": name, "saved": time.time(), "source": str(run), "machine": summary["machine"]}
    (tmp / "baseline.json").write_text(json.dumps(info, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.replace(folder)
    return folder


def _kept_thresholds(folder: Path, summary: dict[str, Any]) -> dict[str, Any] | None:
    file = folder / calibrate.FILE
    if not (file.is_file() and (folder / "summary.json").is_file()):
        return None
    try:
        old = load_summary(folder)
        data = calibrate.read(file)
    except CompareInputError:
        return None
    same = not machine_differences(old, summary) and not scenario_differences(
        old["scenario"], summary["scenario"]
    )
    return data if same else None


def find(name: str) -> Path | None:
    """The folder of baseline ``name``, or None."""
    try:
        folder = _folder(name)
    except CompareInputError:
        return None
    return folder if (folder / "summary.json").is_file() else None


def resolve(given: str | Path) -> Path:
    """A run directory or summary.json as given, else the folder of the saved baseline so named
    (a path that exists wins over a name)."""
    path = Path(given)
    return path if path.exists() else (find(str(given)) or path)


def calibrated(path: Path) -> tuple[dict[str, dict[str, float]], str]:
    """The calibrated thresholds stored beside a baseline (metric → {group: threshold}) and
    where they came from; ({}, "") when it has none."""
    file = calibrate.beside(path)
    if file is None:
        return {}, ""
    data = calibrate.read(file)
    return calibrate.lookup(data), calibrate.describe(data, file)


def compare_with(
    baseline: str | Path, current: dict[str, Any], name: str = "current", **options: Any
) -> Comparison:
    """``current`` (a summary) compared with a baseline given by name or path, using its
    calibrated thresholds when it has them; ``options`` as ``compare()`` takes them."""
    path = resolve(baseline)
    thresholds, where = calibrated(path)
    return compare(
        load_summary(path),
        current,
        names=(str(baseline), name),
        calibrated=thresholds,
        calibration=where,
        **options,
    )


def show(name: str) -> str:
    """A readable description: when and from what it was saved, machine facts, its groups."""
    folder = find(name)
    if folder is None:
        raise CompareInputError(
            f"baseline {name!r}: expected a saved baseline in {store()}, got none"
        )
    info: dict[str, Any] = json.loads((folder / "baseline.json").read_text())
    summary = load_summary(folder)
    machine = info["machine"]
    thresholds = calibrate.beside(folder)
    lines = [
        f"baseline {name}: saved {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(info['saved']))}"
        f" from {info['source']}",
        f"scenario: {summary['scenario']['name']} ({summary['run']['measured_points']} points, "
        f"{summary['scenario']['sweep'].get('repeats', 1)} repeats)",
        f"machine: {machine.get('cpu_model')}, available_parallelism "
        f"{machine.get('available_parallelism')}, cpu_count {machine.get('cpu_count')}, "
        f"python {machine.get('python')}, git {machine.get('git_revision')}",
        "",
        plain_table(
            ["workload", "policy", "workers", "req/s", "p99 ms", "repeats"],
            [
                [
                    row["workload"],
                    row["policy"],
                    row["workers"],
                    fmt(float(row["rps"] or 0), 0),
                    fmt(float(row.get("p99_ms") or 0), 1),
                    row["repeats"],
                ]
                for row in summary["aggregates"]
            ],
        ),
    ]
    if thresholds is not None:
        data = calibrate.read(thresholds)
        lines += [
            "",
            f"calibrated thresholds ({calibrate.describe(data, thresholds.name)}):",
            plain_table(
                ["metric", "group", "noise", "threshold"],
                [
                    [metric, name, f"{g['noise']:.1%}", f"{g['threshold']:.1%}"]
                    for metric, entry in data["metrics"].items()
                    for name, g in entry["groups"].items()
                ],
            ),
        ]
    return "\n".join(lines)
