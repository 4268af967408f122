"""Load with locust, always in its own processes: start them for one point, wait, stop them,
and read what they wrote (CSV stats, the measured window, the worker-id tally).

One process runs locust alone; more run locust's master/worker mode, one ``--worker`` per
process; with ``[remote]`` the lab runs only the master, and the workers are those that
``clusterlab loadgen`` keeps on other machines. A master's workers present the point's token,
get the point's load and send back their results through locust's own messages.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import IO, Any

import pandas as pd
from hdrh.histogram import HdrHistogram

from clusterlab.lab.config.scenario import LOOPBACK_HOSTS, Load, Remote, Workload, url_host
from clusterlab.lab.protocol import HISTOGRAM_RANGE_US, LOAD_CONFIG_ENV, LOAD_TOKEN_ENV, LoadFile
from clusterlab.lab.running import wrk
from clusterlab.lab.running.cpus import pinned
from clusterlab.lab.running.processes import LOOPBACK, free_port, stop_process

LATENCY_COLUMNS = ["percentile", "ms"]


class LoadError(RuntimeError):
    """The load generator failed, timed out, or left no usable results."""


@dataclass
class LoadRun:
    """The load processes of one point (the first one writes the results)."""

    out_dir: Path
    processes: list[subprocess.Popen[bytes]]
    deadline: float
    _logs: list[IO[bytes]] = field(default_factory=list)
    engine: str = "locust"
    #: When the measured run was started (monotonic; for wrk, after its warm-up run).
    launched: float = field(default_factory=time.monotonic)

    def pids(self) -> dict[tuple[str, str], int]:
        return {("generator", str(i)): p.pid for i, p in enumerate(self.processes)}

    @property
    def log(self) -> Path:
        return self.out_dir / f"{self.engine}-0.log"

    def marks(self) -> dict[str, float]:
        """locust's own marks of its start, the window's start and its stop (``phases.json``;
        none for wrk, or when locust wrote none)."""
        try:
            return dict(json.loads((self.out_dir / LoadFile.PHASES).read_text()))
        except (OSError, ValueError):
            return {}

    def start(self, command: list[str], env: dict[str, str]) -> None:
        """One more load process, in its own session, its output to ``<engine>-<n>.log``."""
        log = open(self.out_dir / f"{self.engine}-{len(self.processes)}.log", "ab")  # noqa: SIM115
        self._logs.append(log)  # closed in stop_load
        self.processes.append(
            subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                env={**env, "PYTHONUNBUFFERED": "1"},
            )
        )


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
    #: The latency distribution of the window: ``percentile`` (0–100) → ``ms``, ascending, at
    #: microsecond resolution; ``stats["samples"]`` requests behind it.
    latency: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=LATENCY_COLUMNS))
    #: A master's workers (LoadFile.WORKERS's rows: host, pid, CPU, ``lost``), and one line per
    #: worker lost mid-window (it sent no results: its process ended, or it went silent).
    load_workers: list[dict[str, Any]] = field(default_factory=list)
    #: Answers by worker header over the whole load, warm-up and after the stop included.
    tally_load: dict[str, int] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)

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
    engine: str = "locust",
    spread_sources: bool = False,
    allowed: tuple[str, ...] = (),
    remote: Remote | None = None,
) -> LoadRun:
    """Load ``url`` (loopback, or a host in ``allowed``) for warm-up + duration seconds: locust
    (with ``remote``, a master for the remote workers), or wrk's warm-up run, then its run.

    ``count_every_failure`` (faults): a GET whose connection closed before the answer is not
    re-sent, so a crash's in-flight requests count as failed. ``cpus``: the CPUs the load is
    pinned to (None: not). ``spread_sources``: each locust user connects from a 127.0.0.0/8
    address of its own (wrk cannot: the scenario check refuses wrk with address hashing).
    """
    _refuse_unlisted(url, allowed)
    out_dir.mkdir(parents=True, exist_ok=True)
    if engine == "wrk":
        return _start_wrk(load, workload, url, out_dir, header, cpus)
    # The locustfile ends the run itself; -t bounds a hung run. A master waits for its workers
    # (``wait``), and at the stop for their results or word of their end (``grace``).
    grace = 0.0 if processes == 1 and remote is None else 5.0 if remote is None else 8.0
    wait = remote.wait if remote is not None else 30.0
    run_time = math.ceil(wait + load.warmup + load.duration + grace) + 15
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
        "spread_sources": spread_sources,
        "expect_workers": remote.workers if remote is not None else processes,
        "workers_wait": wait,
        "workers_where": f"on {remote.bind}" if remote is not None else "started here",
    }
    env = {**os.environ, LOAD_CONFIG_ENV: json.dumps(config), LOAD_TOKEN_ENV: _token(remote)}
    commands = [
        pinned(c, cpus)
        for c in _locust_commands(load, url, processes, out_dir, run_time, remote, wait)
    ]
    run = LoadRun(out_dir, [], time.monotonic() + run_time + 60.0)
    try:
        for command in commands:
            run.start(command, env)
    except BaseException:
        stop_load(run)
        raise
    return run


def _refuse_unlisted(url: str, allowed: tuple[str, ...]) -> None:
    host = url_host(url)
    if host not in LOOPBACK_HOSTS and host not in allowed:
        raise LoadError(
            f"refusing to load {url}: the lab loads loopback addresses, and others only when "
            "network.allow lists them"
        )


def _token(remote: Remote | None) -> str:
    """The token the point's workers present: the remote workers' shared one, else a fresh one
    for the lab's own workers."""
    if remote is None:
        return secrets.token_hex(16)
    try:
        return Path(remote.token_file).read_text().strip()
    except OSError as exc:
        raise LoadError(f"remote.token_file: cannot read {remote.token_file}: {exc}") from None


def _locust_commands(
    load: Load,
    url: str,
    processes: int,
    out_dir: Path,
    run_time: int,
    remote: Remote | None,
    wait: float,
) -> list[list[str]]:
    """The command lines: locust alone, a master and ``processes`` workers, or (remote) a
    master alone, bound where the scenario says."""
    base = [sys.executable, "-m", "locust", "-f", str(locustfile()), "--loglevel", "WARNING"]
    main = base + ["--headless", "--host", url, "-u", str(load.users)]
    main += ["-r", str(load.spawn_rate or load.users), "-t", f"{run_time}s"]
    main += ["--csv", str(out_dir / "locust"), "--only-summary", "--exit-code-on-error", "0"]
    main += ["--stop-timeout", "1"]
    if processes == 1 and remote is None:
        return [main]
    host, port = (remote.host, remote.port) if remote is not None else (LOOPBACK, free_port())
    main += ["--master", "--master-bind-host", host, "--master-bind-port", str(port)]
    # the locustfile's admission says what is missing at ``wait``; locust's own limit is later
    expected = remote.workers if remote is not None else processes
    main += ["--expect-workers", str(expected), "--expect-workers-max-wait", f"{wait + 30:g}"]
    if remote is not None:
        return [main]
    worker = base + ["--worker", "--master-host", LOOPBACK, "--master-port", str(port)]
    return [main] + [worker] * processes


def _start_wrk(
    load: Load,
    workload: Workload,
    url: str,
    out_dir: Path,
    header: str | None,
    cpus: tuple[int, ...] | None,
) -> LoadRun:
    threads = len(cpus) if cpus else 1
    try:
        wrk.warm_up(load, workload, url, out_dir, threads, cpus)
    except wrk.WrkError as exc:
        raise LoadError(str(exc)) from None
    env = wrk.wrk_env(workload, load, header, out_dir / wrk.RESULT_FILE)
    run = LoadRun(out_dir, [], time.monotonic() + load.duration + 30.0, engine="wrk")
    run.start(pinned(wrk.wrk_command(load, url, load.duration, threads), cpus), env)
    return run


def wait_load(run: LoadRun) -> None:
    """Wait for the load to finish; LoadError if it fails or overruns."""
    main = run.processes[0]
    try:
        code = main.wait(timeout=max(0.0, run.deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise LoadError(f"{run.engine} did not finish in time; see {run.log}") from None
    if (error := _given_up(run.out_dir)) is not None:
        raise LoadError(error)
    if code != 0:
        raise LoadError(f"{run.engine} exited with status {code}; see {run.log}")


def _given_up(out_dir: Path) -> str | None:
    """The master's one line when it gave up before the point (its workers never came)."""
    try:
        return str(json.loads((out_dir / LoadFile.ERROR).read_text())["error"])
    except (OSError, ValueError, KeyError):
        return None


def stop_load(run: LoadRun) -> None:
    """Stop every locust process of the run (SIGINT, then SIGTERM, then SIGKILL) and reap it."""
    for proc in reversed(run.processes):
        stop_process(proc, grace=3.0, signals=(signal.SIGINT, signal.SIGTERM, signal.SIGKILL))
    for log in run._logs:
        log.close()


def read_load(out_dir: Path, engine: str = "locust", connection: str = "keep-alive") -> LoadOutcome:
    """What the engine measured into ``out_dir``: locust's CSVs and the lab's own marks
    (measured window, tally, bins, histograms), or wrk's result file."""
    if engine == "wrk":
        return _read_wrk(out_dir, close=connection == "new")
    return _read_locust(out_dir)


def _read_wrk(out_dir: Path, close: bool) -> LoadOutcome:
    try:
        data = wrk.read_wrk(out_dir)
    except wrk.WrkError as exc:
        raise LoadError(str(exc)) from None
    stats, start, end, failures = wrk.stats(data, close)
    points = data["points"]
    assert isinstance(points, list)
    tally = data["tally"]
    assert isinstance(tally, dict)
    bins = data["bins"]
    assert isinstance(bins, list)
    return LoadOutcome(
        stats=stats,
        measure_start=start,
        measure_end=end,
        failures=failures,
        history=pd.DataFrame(),
        tally=tally,
        outcomes=wrk.outcome_frames(bins),
        latency=pd.DataFrame(points, columns=LATENCY_COLUMNS),
    )


def _read_locust(out_dir: Path) -> LoadOutcome:
    """Parse locust's CSVs and the lab's own marks (measured window, tally) from ``out_dir``."""
    try:
        stats = pd.read_csv(out_dir / "locust_stats.csv")
        phases = json.loads((out_dir / LoadFile.PHASES).read_text())
    except (OSError, ValueError) as exc:
        raise LoadError(f"locust left no results in {out_dir}: {exc}") from None
    if "measure_start" not in phases:
        raise LoadError(f"locust stopped before its warm-up ended; see {out_dir}/locust-0.log")
    locust_stats, failures, tally_load = _locust_totals(out_dir, stats)
    history_path = out_dir / "locust_stats_history.csv"
    history = pd.read_csv(history_path) if history_path.exists() else pd.DataFrame()
    tally: dict[str, int] = {}
    for path in out_dir.glob(LoadFile.TALLY.pattern):
        for worker, count in json.loads(path.read_text()).items():
            tally[worker] = tally.get(worker, 0) + int(count)
    histogram = _histogram(out_dir)
    workers = _load_workers(out_dir)
    return LoadOutcome(
        load_workers=list(workers.get("workers", [])),
        tally_load=tally_load,
        lost=[str(line) for line in workers.get("lost", [])],
        outcomes=_outcomes(out_dir),
        stats={**locust_stats, **_latency_stats(histogram), **_open_model(out_dir)},
        latency=latency_points(histogram),
        measure_start=float(phases["measure_start"]),
        measure_end=float(phases.get("stop", time.time())),
        failures=failures,
        history=history,
        tally=tally,
    )


def _load_workers(out_dir: Path) -> dict[str, list[Any]]:
    """A master's LoadFile.WORKERS (empty for a lone locust)."""
    try:
        data: dict[str, list[Any]] = json.loads((out_dir / LoadFile.WORKERS).read_text())
    except (OSError, ValueError):
        return {}
    return data


def _locust_totals(
    out_dir: Path, stats: pd.DataFrame
) -> tuple[dict[str, float], pd.DataFrame, dict[str, int]]:
    """The window's counts and failures: a lone locust's own totals, written at its stop, over
    its CSV (written once a second, so possibly a second old); a master's CSV, written after its
    workers' last reports."""
    total = stats[stats["Name"] == "Aggregated"].iloc[0]
    counts = {k: float(total[c]) for k, c in _STATS.items()}
    failures_path = out_dir / "locust_failures.csv"
    failures = pd.read_csv(failures_path) if failures_path.exists() else pd.DataFrame()
    totals_path = out_dir / LoadFile.TOTALS
    by_worker: dict[str, int] = {}
    if totals_path.exists():
        totals = json.loads(totals_path.read_text())
        counts |= {"requests": float(totals["requests"]), "failures": float(totals["failures"])}
        failures = pd.DataFrame(totals["failure_table"])
        by_worker = {str(w): int(n) for w, n in totals.get("by_worker_whole_load", {}).items()}
    return counts, failures, by_worker


def _histogram(out_dir: Path) -> HdrHistogram:
    """The window's histogram (the one its gatherer wrote; any others merged in)."""
    merged = HdrHistogram(*HISTOGRAM_RANGE_US)
    for path in sorted(out_dir.glob(LoadFile.HISTOGRAM.pattern)):
        merged.decode_and_add(path.read_bytes())
    return merged


#: The percentiles a latency distribution is kept at (0.1 apart, finer in the tail).
GRID = [i / 10 for i in range(1000)] + [99.9 + i / 100 for i in range(1, 10)] + [99.999, 100.0]


def latency_points(histogram: HdrHistogram) -> pd.DataFrame:
    """The histogram at the GRID's percentiles, in ms (empty without samples)."""
    if histogram.get_total_count() == 0:
        return pd.DataFrame(columns=LATENCY_COLUMNS)
    values = histogram.get_percentile_to_value_dict(GRID[:-1])  # one pass, not one per point
    rows = [(p, values[p] / 1000.0) for p in GRID[:-1]]
    rows.append((100.0, histogram.get_max_value() / 1000.0))
    return pd.DataFrame(rows, columns=LATENCY_COLUMNS)


def _open_model(out_dir: Path) -> dict[str, float]:
    """Open model: arrivals in the window, those sent late (their user still waiting), and
    p50/p99 of latency from the actual send (the corrected latency counts from the intended
    send); nothing for the closed model."""
    sent = HdrHistogram(*HISTOGRAM_RANGE_US)
    counts = {"arrivals": 0.0, "late_arrivals": 0.0}
    files = sorted(out_dir.glob(LoadFile.OPEN.pattern))
    for path in files:
        data = json.loads(path.read_text())
        counts["arrivals"] += data.get("arrivals", 0)
        counts["late_arrivals"] += data.get("late", 0)
        sent.decode_and_add(data["sent_histogram"].encode("ascii"))
    if not files:
        return {}
    return {
        **counts,
        "p50_sent_ms": sent.get_value_at_percentile(50.0) / 1000.0,
        "p99_sent_ms": sent.get_value_at_percentile(99.0) / 1000.0,
    }


def _latency_stats(histogram: HdrHistogram) -> dict[str, float]:
    """Percentiles at microsecond resolution from the histogram, replacing locust's (rounded to
    whole milliseconds); nothing when no histogram was written (an older locustfile)."""
    n = histogram.get_total_count()
    if n == 0:
        return {}
    at = histogram.get_percentile_to_value_dict([50.0, 90.0, 99.0, 99.9]).__getitem__
    return {
        "samples": float(n),
        "avg_ms": histogram.get_mean_value() / 1000.0,
        "p50_ms": at(50.0) / 1000.0,
        "p90_ms": at(90.0) / 1000.0,
        "p99_ms": at(99.0) / 1000.0,
        "p999_ms": at(99.9) / 1000.0,
        "max_ms": histogram.get_max_value() / 1000.0,
    }


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
