"""Load with locust, always in its own processes: start them for one point, wait, stop them,
and read what they wrote (CSV stats, the measured window, the worker-id tally).

One process runs locust alone; more run locust's master/worker mode, one ``--worker`` per process.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import IO

import pandas as pd

from clusterlab.lab.config.scenario import Load, Workload
from clusterlab.lab.protocol import LOAD_CONFIG_ENV, LoadFile
from clusterlab.lab.running.cpus import pinned
from clusterlab.lab.running.processes import LOOPBACK, free_port, stop_process


class LoadError(RuntimeError):
    """Locust failed, timed out, or left no usable results."""


@dataclass
class LoadRun:
    """The locust processes of one point (the first one writes the CSVs)."""

    out_dir: Path
    processes: list[subprocess.Popen[bytes]]
    deadline: float
    _logs: list[IO[bytes]] = field(default_factory=list)

    def pids(self) -> dict[tuple[str, str], int]:
        return {("generator", str(i)): p.pid for i, p in enumerate(self.processes)}


@dataclass(frozen=True)
class LoadOutcome:
    """What locust measured in the window after warm-up."""

    stats: dict[str, float]
    measure_start: float
    measure_end: float
    failures: pd.DataFrame
    history: pd.DataFrame
    tally: dict[str, int]
    #: Every request's outcome in bins: ``bin`` (its number since the epoch), ``width`` (0.1 s),
    #: ``start`` and ``end`` (Unix time), ``outcome`` ("ok" or a failure cause), ``count``;
    #: summed over locust processes, warm-up included.
    outcomes: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def window_s(self) -> float:
        return self.measure_end - self.measure_start


def locustfile() -> Path:
    return Path(str(resources.files("clusterlab.lab.spawned").joinpath("locustfile.py")))


def start_load(
    load: Load,
    workload: Workload,
    url: str,
    processes: int,
    out_dir: Path,
    header: str | None,
    count_every_failure: bool = False,
    cpus: tuple[int, ...] | None = None,
) -> LoadRun:
    """Start locust against ``url`` (loopback only) for warm-up + duration seconds.

    ``count_every_failure`` (runs with faults): the HTTP client does not silently re-send a GET
    whose connection closed before the answer, so a crash's in-flight requests count as failed.
    ``cpus``: the CPUs the load is pinned to (None: not pinned).
    """
    if not url.startswith(("http://127.0.0.1", "http://localhost")):
        raise LoadError(f"refusing to load {url}: the lab only loads loopback addresses")
    out_dir.mkdir(parents=True, exist_ok=True)
    # The locustfile ends the run itself (exact window); -t only bounds a run that hangs.
    grace = 1.5 if processes == 1 else 4.0
    run_time = math.ceil(load.warmup + load.duration + grace) + 15
    config = {
        "out": str(out_dir),
        "warmup": load.warmup,
        "duration": load.duration,
        "grace": grace,
        "requests": [list(r) for r in workload.requests],
        "connection": load.connection,
        "wait": load.wait,
        "rate_per_user": load.rate / load.users if load.rate else None,
        "worker_header": header,
        "count_every_failure": count_every_failure,
    }
    env = {**os.environ, LOAD_CONFIG_ENV: json.dumps(config), "PYTHONUNBUFFERED": "1"}
    commands = [pinned(c, cpus) for c in _locust_commands(load, url, processes, out_dir, run_time)]
    run = LoadRun(out_dir, [], time.monotonic() + run_time + 60.0)
    try:
        for i, command in enumerate(commands):
            log = open(out_dir / f"locust-{i}.log", "ab")  # noqa: SIM115 - closed in stop_load
            run._logs.append(log)
            run.processes.append(
                subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                    env=env,
                )
            )
    except BaseException:
        stop_load(run)
        raise
    return run


def _locust_commands(
    load: Load, url: str, processes: int, out_dir: Path, run_time: int
) -> list[list[str]]:
    """The command lines: locust alone, or a master and ``processes`` workers."""
    base = [sys.executable, "-m", "locust", "-f", str(locustfile()), "--loglevel", "WARNING"]
    main = base + ["--headless", "--host", url, "-u", str(load.users)]
    main += ["-r", str(load.spawn_rate or load.users), "-t", f"{run_time}s"]
    main += ["--csv", str(out_dir / "locust"), "--only-summary", "--exit-code-on-error", "0"]
    main += ["--stop-timeout", "1"]
    if processes == 1:
        return [main]
    port = free_port()
    main += ["--master", "--master-bind-host", LOOPBACK, "--master-bind-port", str(port)]
    main += ["--expect-workers", str(processes), "--expect-workers-max-wait", "30"]
    worker = base + ["--worker", "--master-host", LOOPBACK, "--master-port", str(port)]
    return [main] + [worker] * processes


def wait_load(run: LoadRun) -> None:
    """Wait for locust to finish; LoadError if it fails or overruns."""
    main = run.processes[0]
    try:
        code = main.wait(timeout=max(0.0, run.deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise LoadError(f"locust did not finish in time; see {run.out_dir}/locust-0.log") from None
    if code != 0:
        raise LoadError(f"locust exited with status {code}; see {run.out_dir}/locust-0.log")


def stop_load(run: LoadRun) -> None:
    """Stop every locust process of the run (SIGINT, then SIGTERM, then SIGKILL) and reap it."""
    for proc in reversed(run.processes):
        stop_process(proc, grace=3.0, signals=(signal.SIGINT, signal.SIGTERM, signal.SIGKILL))
    for log in run._logs:
        log.close()


def read_load(out_dir: Path) -> LoadOutcome:
    """Parse locust's CSVs and the lab's own marks (measured window, tally) from ``out_dir``."""
    try:
        stats = pd.read_csv(out_dir / "locust_stats.csv")
        phases = json.loads((out_dir / LoadFile.PHASES).read_text())
    except (OSError, ValueError) as exc:
        raise LoadError(f"locust left no results in {out_dir}: {exc}") from None
    if "measure_start" not in phases:
        raise LoadError(f"locust stopped before its warm-up ended; see {out_dir}/locust-0.log")
    total = stats[stats["Name"] == "Aggregated"].iloc[0]
    failures_path = out_dir / "locust_failures.csv"
    failures = pd.read_csv(failures_path) if failures_path.exists() else pd.DataFrame()
    history_path = out_dir / "locust_stats_history.csv"
    history = pd.read_csv(history_path) if history_path.exists() else pd.DataFrame()
    tally: dict[str, int] = {}
    for path in out_dir.glob(LoadFile.TALLY.pattern):
        for worker, count in json.loads(path.read_text()).items():
            tally[worker] = tally.get(worker, 0) + int(count)
    return LoadOutcome(
        outcomes=_outcomes(out_dir),
        stats={k: float(total[c]) for k, c in _STATS.items()},
        measure_start=float(phases["measure_start"]),
        measure_end=float(phases.get("stop", time.time())),
        failures=failures,
        history=history,
        tally=tally,
    )


def _outcomes(out_dir: Path) -> pd.DataFrame:
    frames = []
    for path in out_dir.glob(LoadFile.OUTCOMES.pattern):
        data = json.loads(path.read_text())
        frame = pd.DataFrame(data["counts"], columns=["bin", "outcome", "count"])
        frame["width"] = float(data["bin_s"])
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["bin", "width", "start", "end", "outcome", "count"])
    both = (
        pd.concat(frames)
        .groupby(["bin", "outcome"], as_index=False)
        .agg(width=("width", "first"), count=("count", "sum"))
    )
    both["start"] = both["bin"] * both["width"]
    both["end"] = (both["bin"] + 1) * both["width"]
    return both[["bin", "width", "start", "end", "outcome", "count"]]


_STATS = {
    "requests": "Request Count",
    "failures": "Failure Count",
    "avg_ms": "Average Response Time",
    "p50_ms": "50%",
    "p90_ms": "90%",
    "p99_ms": "99%",
    "p999_ms": "99.9%",
    "max_ms": "100%",
}
