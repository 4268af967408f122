"""CPU and memory of the processes in a measurement, sampled with psutil in a background thread.

Each sample is cumulative CPU seconds and RSS of one process (or the machine's busy CPU seconds),
so any window's usage is a difference of two samples, whatever the sampling interval.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

import pandas as pd
import psutil

Sources = Callable[[], dict[tuple[str, str], int]]
#: CPU seconds by (role, key) that a target reports itself (its metrics endpoint), for targets
#: whose processes psutil cannot see (another host, no pid given)
Reported = Callable[[], dict[tuple[str, str], float]]
COLUMNS = ["t", "role", "key", "pid", "cpu_s", "rss_mb"]
#: The pid of a sample the target reported itself (no RSS: the endpoint has none)
REPORTED_PID = 0


class Sampler:
    """Samples every process that ``sources()`` names, as (role, key) → pid, until stopped."""

    def __init__(
        self, sources: Sources, interval: float = 0.5, reported: Reported | None = None
    ) -> None:
        self._sources = sources
        self._reported = reported
        self._interval = interval
        self._rows: list[tuple[float, str, str, int, float, float]] = []
        self._procs: dict[int, psutil.Process] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lab-sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self._interval)

    def sample(self) -> None:
        now = time.time()
        self._rows.append((now, "machine", "all", 0, machine_busy_seconds(), 0.0))
        for (role, key), pid in self._sources().items():
            proc = self._procs.get(pid)
            try:
                if proc is None:
                    proc = self._procs[pid] = psutil.Process(pid)
                with proc.oneshot():
                    cpu = proc.cpu_times()
                    rss = proc.memory_info().rss
            except psutil.Error:
                continue
            self._rows.append((now, role, key, pid, cpu.user + cpu.system, rss / 2**20))
        if self._reported is not None:
            for (role, key), cpu_s in self._reported().items():
                self._rows.append((now, role, key, REPORTED_PID, cpu_s, math.nan))

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self._rows, columns=COLUMNS)


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent not idle (interrupts included, as process times
    include the network work done on their behalf); guest time is already inside user time."""
    times = psutil.cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0)
    guest = getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)
    return float(sum(times)) - idle - guest


def window_usage(samples: pd.DataFrame, start: float, end: float) -> pd.DataFrame:
    """Per (role, key): CPU % of one core and peak RSS within [start, end], from the samples
    nearest inside the window."""
    inside = samples[(samples["t"] >= start) & (samples["t"] <= end)]
    rows = []
    for (role, key), group in inside.groupby(["role", "key"], sort=False):
        group = group.sort_values("t")
        span = float(group["t"].iloc[-1] - group["t"].iloc[0])
        cpu_s = float(group["cpu_s"].iloc[-1] - group["cpu_s"].iloc[0])
        rows.append(
            {
                "role": role,
                "key": key,
                "pid": int(group["pid"].iloc[-1]),
                "cpu_s": cpu_s,
                "cpu_pct": 100.0 * cpu_s / span if span > 0 else float("nan"),
                "rss_mb": float(group["rss_mb"].max()),
                "span_s": span,
            }
        )
    columns = ["role", "key", "pid", "cpu_s", "cpu_pct", "rss_mb", "span_s"]
    return pd.DataFrame(rows, columns=columns)


def role_cpu_pct(usage: pd.DataFrame, role: str) -> float:
    """CPU of every process of ``role`` together, % of one core over the sampled window: their
    CPU seconds over the longest span any process was sampled (the machine's), so a process that
    lived for part of the window (a crashed worker, its replacement) counts for that part only."""
    mine = usage[usage["role"] == role]
    span = float(usage["span_s"].max()) if not usage.empty else 0.0
    if mine.empty or span <= 0:
        return math.nan
    return 100.0 * float(mine["cpu_s"].sum()) / span
