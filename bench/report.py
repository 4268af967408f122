"""Machine facts, result files under ``bench/results/`` and plain-text tables."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
from tabulate import tabulate

from clusterlab.lab.running import machine
from clusterlab.lab.running.sampler import machine_busy_seconds

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


# The lab's packages and those of the peers bench starts.
PACKAGES = tuple(dict.fromkeys((*machine.PACKAGES, "gunicorn", "psutil")))


def machine_facts() -> dict[str, Any]:
    """The lab's machine facts (:func:`clusterlab.lab.running.machine.machine_facts`, with the
    peers' packages) and the versions of the tools bench runs, ``node`` and ``wrk``."""
    return {
        **machine.machine_facts(PACKAGES),
        "node": _version(["node", "--version"]),
        "wrk": _version(["wrk", "--version"]).split(" Copyright")[0],
    }


def stamp() -> str:
    """``YYYYMMDD-HHMMSS`` in UTC, the name of a result file."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime())


def write_text(path: Path, text: str) -> Path:
    """Write ``path`` atomically (a temporary file renamed over it); return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def write_json(prefix: str, data: dict[str, Any], out_dir: Path = RESULTS) -> Path:
    """Write ``<out_dir>/<prefix>-<UTC timestamp>.json`` (``<timestamp>.json`` when ``prefix``
    is empty) atomically; return its path."""
    name = f"{prefix}-{stamp()}" if prefix else stamp()
    return write_text(out_dir / f"{name}.json", json.dumps(data, indent=2, default=str) + "\n")


def table(header: Sequence[str], rows: Sequence[Sequence[object]], markdown: bool = False) -> str:
    """A left-aligned plain-text table (GitHub Markdown with ``markdown``), rendered by tabulate
    with the cells as given (numbers already formatted are not parsed again)."""
    return tabulate(
        rows,
        headers=list(header),
        tablefmt="github" if markdown else "simple",
        stralign="left",
        numalign="left",
        disable_numparse=True,
    )


def _cpu_s(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (0 if it is gone)."""
    try:
        return _cpu_s(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return 0.0


def tree_cpu_s(pids: Sequence[int]) -> float:
    """User + system CPU seconds of these processes and all their descendants."""
    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += _cpu_s(p)
    return total


class ForeignCpu:
    """CPU used by processes that are not ours during a window, as % of all CPUs.

    foreign = system busy time - (this process + its reaped children, e.g. wrk) - server trees.
    A high figure means another load shared the machine and the sample is suspect.
    """

    def __init__(self, server_pids: Sequence[int]) -> None:
        self.pids = list(server_pids)
        self._t0 = (time.monotonic(), machine_busy_seconds(), self._ours())

    def _ours(self) -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system + tree_cpu_s(self.pids)

    def pct(self) -> float:
        wall0, busy0, ours0 = self._t0
        wall = time.monotonic() - wall0
        foreign = (machine_busy_seconds() - busy0) - (self._ours() - ours0)
        return max(0.0, 100 * foreign / (wall * (os.cpu_count() or 1))) if wall > 0 else 0.0


class ServerCost:
    """What one server (a process tree) cost over a window: its root process's CPU (the primary,
    uvicorn's supervisor, gunicorn's arbiter), as % of one core, its RSS at the end, and the whole
    tree's CPU %. Descendants that exit during the window lose their share (none should)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._t0 = self._now()

    def _now(self) -> tuple[float, float, float]:
        return (time.monotonic(), proc_cpu_s(self.pid), tree_cpu_s([self.pid]))

    def read(self) -> dict[str, float | None]:
        return self._since(self._t0, self._now())

    def lap(self) -> dict[str, float | None]:
        """What it cost since the last lap (the start, at first); the next lap starts now."""
        now = self._now()
        cost, self._t0 = self._since(self._t0, now), now
        return cost

    def _since(
        self, then: tuple[float, float, float], now: tuple[float, float, float]
    ) -> dict[str, float | None]:
        wall = now[0] - then[0]
        if wall <= 0:
            return {}
        return {
            "primary_cpu_pct": round(100 * (now[1] - then[1]) / wall, 2),
            "primary_rss_mib": rss_mib(self.pid),
            "server_cpu_pct": round(100 * (now[2] - then[2]) / wall, 1),
        }


def rss_mib(pid: int) -> float | None:
    """Resident set size of one process in MiB (None if it is gone)."""
    try:
        return round(psutil.Process(pid).memory_info().rss / 2**20, 2)
    except psutil.NoSuchProcess:
        return None


class Quiet:
    """What the quiet-machine checks share over a run.

    * The last foreign CPU % measured (by a sample or a wait window): when one under the limit
      ended less than ``fresh_s`` ago, :func:`wait_quiet` does not wait again (the machine was
      quiet a moment ago; a disturbed sample is still retaken).
    * An optional budget (``budget_s``, None = unlimited) of seconds that waiting and retaking
      may cost in all; once it is spent, samples are taken at once and kept (their foreign CPU %
      is still recorded), so a busy machine cannot stretch a run without bound.
    """

    def __init__(self, budget_s: float | None = None, fresh_s: float = 2.0) -> None:
        self.budget_s, self.fresh_s = budget_s, fresh_s
        self.spent_s = 0.0
        self._last: tuple[float, float] | None = None  # (monotonic time, pct)

    def left(self) -> float:
        return float("inf") if self.budget_s is None else max(0.0, self.budget_s - self.spent_s)

    def charge(self, seconds: float) -> None:
        self.spent_s += max(0.0, seconds)

    def saw(self, pct: float) -> None:
        self._last = (time.monotonic(), pct)

    def recently_quiet(self, max_pct: float) -> float | None:
        """The last foreign CPU % if it was under ``max_pct`` and is fresh, else None."""
        if (
            self._last
            and self._last[1] < max_pct
            and time.monotonic() - self._last[0] < self.fresh_s
        ):
            return self._last[1]
        return None


QUIET = Quiet()


def may_retake(started: float) -> bool:
    """Whether a disturbed sample begun at ``started`` (monotonic) may be retaken under the
    budget of :data:`QUIET`; if so, its time is charged to it."""
    if QUIET.left() <= 0:
        return False
    QUIET.charge(time.monotonic() - started)
    return True


def wait_quiet(server_pids: Sequence[int], max_pct: float, max_wait_s: float) -> float | None:
    """Wait (1 s windows, up to ``max_wait_s``) until foreign CPU < ``max_pct``; return the last %.

    Returns at once when a sample that just ended was quiet (see :class:`Quiet`), and with None
    (no window measured) once :data:`QUIET`'s budget is spent."""
    if (recent := QUIET.recently_quiet(max_pct)) is not None:
        return recent
    max_wait_s = min(max_wait_s, QUIET.left())
    if max_wait_s <= 0:
        return None
    t0 = time.monotonic()
    deadline = t0 + max_wait_s
    try:
        while True:
            meter = ForeignCpu(server_pids)
            time.sleep(1)
            pct = meter.pct()
            QUIET.saw(pct)
            if pct < max_pct or time.monotonic() >= deadline:
                return pct
    finally:
        QUIET.charge(time.monotonic() - t0)


def add_quiet_options(ap: argparse.ArgumentParser, retake: str, dest: str = "wait_quiet") -> None:
    """``--wait-quiet S`` (into ``dest``; 0: no waiting, foreign CPU only recorded) and
    ``--quiet-pct`` (5): before each sample wait for a quiet machine; ``retake`` says what
    becomes of a sample that others disturbed."""
    ap.add_argument(
        "--wait-quiet",
        dest=dest,
        type=float,
        default=0.0,
        metavar="S",
        help=f"before each sample wait up to S s for foreign CPU < --quiet-pct; {retake}",
    )
    ap.add_argument("--quiet-pct", type=float, default=5.0, help="(5)")
