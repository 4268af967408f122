"""How many CPUs this process may really use: affinity capped by a cgroup CPU quota."""

from __future__ import annotations

import math
import os
from pathlib import Path


def available_parallelism() -> int:
    """CPUs this process may use: `sched_getaffinity`, capped by a cgroup v2/v1 quota; ≥ 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    if quota is not None:
        cpus = min(cpus, quota)
    return max(1, cpus)


def cgroup_cpu_limit(
    root: Path = Path("/sys/fs/cgroup"), proc: Path = Path("/proc/self/cgroup")
) -> int | None:
    """The CPU quota of this process's cgroup, rounded up to whole CPUs, or None if unlimited."""
    try:
        lines = proc.read_text().splitlines()
    except OSError:
        return None
    limits: list[float] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        rel = rel.lstrip("/")
        if controllers == "":  # cgroup v2 unified hierarchy
            limits += _v2_limits(root, rel)
        elif "cpu" in controllers.split(","):
            limits += _v1_limits(root, controllers, rel)
    if not limits:
        return None
    return max(1, math.ceil(min(limits) - 1e-9))


def _v2_limits(root: Path, rel: Path | str) -> list[float]:
    found: list[float] = []
    path = root / rel
    # A quota anywhere up the hierarchy applies; walk to the root.
    while True:
        found += _parse_cpu_max(path / "cpu.max")
        if path == root or root not in path.parents:
            break
        path = path.parent
    return found


def _parse_cpu_max(path: Path) -> list[float]:
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return []
    if quota == "max" or int(period) <= 0:
        return []
    return [int(quota) / int(period)]


def _v1_limits(root: Path, controllers: str, rel: str) -> list[float]:
    for mount in (root / controllers, root / "cpu,cpuacct", root / "cpu"):
        for base in (mount / rel, mount):
            try:
                quota = int((base / "cpu.cfs_quota_us").read_text())
                period = int((base / "cpu.cfs_period_us").read_text())
            except (OSError, ValueError):
                continue
            return [quota / period] if quota > 0 and period > 0 else []
    return []
