"""Facts about the machine a run was measured on, for the report, ``clusterlab info`` and (later)
deciding whether two runs are comparable."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from clusterlab import available_parallelism

PACKAGES = ("clusterlab", "locust", "uvicorn", "uvloop", "httptools", "waitress", "pandas", "scipy")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git(*args: str) -> str | None:
    """What ``git ARGS`` printed in this checkout, or None when git could not answer."""
    try:
        done = subprocess.run(
            ["git", *args],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_revision() -> str:
    return _git("rev-parse", "--short", "HEAD") or "unknown"


def git_dirty() -> bool | None:
    """Whether tracked files differ from the revision (None when git could not answer)."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return None if status is None else bool(status)


def package_versions(names: Sequence[str] = PACKAGES) -> dict[str, str | None]:
    """Each package's installed version; None for one that is not installed."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def machine_facts(packages: Sequence[str] = PACKAGES) -> dict[str, Any]:
    """CPU model and counts, affinity, memory, load, OS and kernel, Python, the versions of
    ``packages``, git revision and whether the checkout has changes."""
    return {
        "cpu_model": cpu_model(),
        "available_parallelism": available_parallelism(),
        "cpu_count": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "os": platform.platform(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "packages": package_versions(packages),
        "git_revision": git_revision(),
        "git_dirty": git_dirty(),
    }
