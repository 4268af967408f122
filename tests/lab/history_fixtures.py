"""Run histories for the history tests, made from a recorded real run (``trust-quick/a1.json``:
/cpu?ms=2, 1 worker, rr, 5 repeats, target-bound): each synthetic run is that run with its
throughput scaled by a chosen factor and its start moved on by a minute per run."""

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np

RECORDED = Path(__file__).parent / "data" / "compare" / "trust-quick"


def recorded(name: str = "a1") -> dict[str, Any]:
    data: dict[str, Any] = json.loads((RECORDED / f"{name}.json").read_text())
    return data


def scaled(
    base: dict[str, Any], n: int, factor: float, revision: str | None = None, cpu: float = 1.0
) -> dict:
    """Run ``n`` of a history: ``base`` with rps × factor and p50 ÷ factor, the workers' CPU ×
    ``cpu`` (1: the cost per request changed; = factor: the machine gave the workers less CPU),
    started ``n`` minutes after it, at git revision ``revision``."""
    run = copy.deepcopy(base)
    for point in run["points"]:
        point["rps"] *= factor
        point["cpu_pct"]["workers"] *= cpu
        point["requests"] = int(point["requests"] * factor)
        point["p50_ms"] /= factor
    run["run"]["started"] += 60 * n
    run["run"]["finished"] += 60 * n
    run["machine"]["git_revision"] = revision or f"c{n:03d}"
    return run


def factors(levels: list[tuple[int, float]], noise: float = 0.02, seed: int = 0) -> list[float]:
    """Per-run throughput factors: ``levels`` as (runs, level) pieces, times normal noise."""
    rng = np.random.default_rng(seed)
    steps = [level for count, level in levels for _ in range(count)]
    return [float(v) for v in np.array(steps) * (1 + rng.normal(0, noise, len(steps)))]


def write_runs(
    folder: Path, values: list[float], base: str = "a1", cpu_follows: bool = False
) -> list[Path]:
    """One summary.json per factor under ``folder``/runNNN/, oldest first; ``cpu_follows``: the
    workers' CPU scaled with the throughput (a machine that gave less CPU)."""
    start = recorded(base)
    paths = []
    for n, factor in enumerate(values):
        path = folder / f"run{n:03d}" / "summary.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(scaled(start, n, factor, cpu=factor if cpu_follows else 1.0)))
        paths.append(path)
    return paths
