"""Machine facts, result files under ``bench/results/`` and plain-text tables."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

RESULTS = Path(__file__).resolve().parent / "results"


def _version(argv: list[str]) -> str:
    if not shutil.which(argv[0]):
        return "missing"
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


def machine_facts() -> dict[str, Any]:
    """CPU, memory, OS and tool versions, for every result file."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "available_parallelism": len(os.sched_getaffinity(0)),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "node": _version(["node", "--version"]),
        "wrk": _version(["wrk", "--version"]),
        "load_avg_at_start": os.getloadavg(),
    }


def write_json(prefix: str, data: dict[str, Any]) -> Path:
    """Write ``bench/results/<prefix>-<UTC timestamp>.json`` atomically; return its path."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A left-aligned plain-text table."""
    cells = [[str(c) for c in header], *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _busy_s() -> float:
    t = psutil.cpu_times()
    return float(sum(getattr(t, k, 0.0) for k in ("user", "nice", "system", "irq", "softirq", "steal")))


def _tree_cpu_s(pids: Sequence[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for p in procs:
            try:
                c = p.cpu_times()
                total += c.user + c.system
            except psutil.NoSuchProcess:
                pass
    return total


class ForeignCpu:
    """CPU used by processes that are not ours during a window, as % of all CPUs.

    foreign = system busy time - (this process + its reaped children, e.g. wrk) - server trees.
    A high figure means another load shared the machine and the sample is suspect.
    """

    def __init__(self, server_pids: Sequence[int]) -> None:
        self.pids = list(server_pids)
        self._t0 = (time.monotonic(), _busy_s(), self._ours())

    def _ours(self) -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system + _tree_cpu_s(self.pids)

    def pct(self) -> float:
        wall0, busy0, ours0 = self._t0
        wall = time.monotonic() - wall0
        foreign = (_busy_s() - busy0) - (self._ours() - ours0)
        return max(0.0, 100 * foreign / (wall * (os.cpu_count() or 1))) if wall > 0 else 0.0


def wait_quiet(server_pids: Sequence[int], max_pct: float, max_wait_s: float) -> float:
    """Wait (1 s windows, up to ``max_wait_s``) until foreign CPU < ``max_pct``; return the last %."""
    deadline = time.monotonic() + max_wait_s
    while True:
        meter = ForeignCpu(server_pids)
        time.sleep(1)
        pct = meter.pct()
        if pct < max_pct or time.monotonic() >= deadline:
            return pct
