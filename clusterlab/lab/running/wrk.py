"""The native load engine: Debian's ``wrk`` driven by the lab's Lua script (``spawned/
wrk_load.lua``). A C event loop needs a small fraction of the CPU locust needs per request, so
throughput points stay target-bound where one locust process would be the limit.

A point is a warm-up run, then the measured run (``-d`` = load.duration): wrk counts from its own
start, so the window is exactly the second run. Connections = load.users; threads = the load's
CPUs when load and target have separate ones, else 1.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import pandas as pd

from clusterlab.lab.config.scenario import Load, Scenario, Workload, wrk_refusal
from clusterlab.lab.running.cpus import pinned

#: A binary this engine needs on PATH.
WRK = "wrk"
RESULT_FILE = "wrk.out"


class WrkError(RuntimeError):
    """wrk failed or left no result."""


def wrk_installed() -> bool:
    return shutil.which(WRK) is not None


def choose_engine(scenario: Scenario) -> tuple[str, str]:
    """The engine a scenario's points use, and a line saying why when auto picked locust."""
    wanted = scenario.load.engine
    if wanted != "auto":
        return wanted, ""
    refusal = wrk_refusal(scenario)
    if refusal is not None:
        return "locust", f"load engine: locust, because {refusal}"
    if not wrk_installed():
        return "locust", "load engine: locust, because wrk is not installed (apt-get install wrk)"
    return "wrk", ""


def lua_script() -> Path:
    return Path(str(resources.files("clusterlab.lab.spawned").joinpath("wrk_load.lua")))


def wrk_command(load: Load, url: str, duration: float, threads: int) -> list[str]:
    connections = max(load.users, threads)
    argv = [WRK, f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--latency"]
    return argv + ["--timeout", "10s", "-s", str(lua_script()), url]


def wrk_env(workload: Workload, load: Load, header: str | None, out: Path) -> dict[str, str]:
    paths = "\n".join(f"{weight:g} {path}" for path, weight in workload.requests)
    return {
        **os.environ,
        "CLUSTERLAB_WRK_OUT": str(out),
        "CLUSTERLAB_WRK_PATHS": paths,
        "CLUSTERLAB_WRK_HEADER": header or "",
        "CLUSTERLAB_WRK_CLOSE": "1" if load.connection == "new" else "0",
    }


def warm_up(
    load: Load,
    workload: Workload,
    url: str,
    out_dir: Path,
    threads: int,
    cpus: tuple[int, ...] | None,
) -> None:
    """The warm-up: a wrk run whose results are dropped, rounded up to whole seconds (wrk's
    unit); bounded; WrkError if it fails."""
    if load.warmup <= 0:
        return
    seconds = math.ceil(load.warmup)
    env = wrk_env(workload, load, None, out_dir / "warmup.out")
    with open(out_dir / "wrk-warmup.log", "wb") as log:
        try:
            done = subprocess.run(
                pinned(wrk_command(load, url, seconds, threads), cpus),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                timeout=seconds + 30,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired:
            raise WrkError(f"wrk's warm-up did not finish; see {out_dir}/wrk-warmup.log") from None
    if done.returncode != 0:
        raise WrkError(f"wrk exited with status {done.returncode}; see {out_dir}/wrk-warmup.log")


def read_wrk(out_dir: Path) -> dict[str, object]:
    """The measured run's result file as plain data: window, totals, errors, latency points
    (percentile → ms), tally and 100 ms bins."""
    path = out_dir / RESULT_FILE
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise WrkError(f"wrk left no result in {out_dir}: {exc}") from None
    fields: dict[str, list[str]] = {}
    points: list[tuple[float, float]] = []
    tally: dict[str, int] = {}
    bins: list[tuple[int, str, int]] = []
    for line in lines:
        kind, *rest = line.split()
        if kind == "pct":
            points.append((float(rest[0]), int(rest[1]) / 1000.0))
        elif kind == "tally":
            tally[rest[0]] = tally.get(rest[0], 0) + int(rest[1])
        elif kind == "bin":
            bins.append((int(rest[0]), rest[1], int(rest[2])))
        else:
            fields[kind] = rest
    if "requests" not in fields:
        raise WrkError(f"wrk's result in {out_dir} is incomplete")
    return {"fields": fields, "points": points, "tally": tally, "bins": bins}


def outcome_frames(bins: list[tuple[int, str, int]], width: float = 0.1) -> pd.DataFrame:
    """Bins as the lab's outcome table (the locust engine writes the same columns)."""
    frame = pd.DataFrame(bins, columns=["bin", "outcome", "count"])
    frame = frame.groupby(["bin", "outcome"], as_index=False)["count"].sum()
    frame["width"] = width
    frame["start"] = frame["bin"] * width
    frame["end"] = (frame["bin"] + 1) * width
    return frame[["bin", "width", "start", "end", "outcome", "count"]]


def stats(
    data: dict[str, object], close: bool
) -> tuple[dict[str, float], float, float, pd.DataFrame]:
    """(stats as the locust engine reports them, window start, window end, failures table).

    Failed requests: answers with a 4xx/5xx status, and connect, write and timeout errors (each
    a request that got no answer). A read error is one too with keep-alive; with a new
    connection per request (``close``) wrk also counts one whenever a server closes the
    connection right after its answer, so there read errors are listed, not counted as failed.
    """
    fields = data["fields"]
    assert isinstance(fields, dict)
    answered = int(fields["requests"][0])
    connect, read, write, status, timeout = (int(v) for v in fields["errors"])
    unanswered = connect + write + timeout + (0 if close else read)
    points = pd.Series(dict(data["points"]))  # type: ignore[call-overload]
    start, end = float(fields["start"][0]), float(fields["end"][0])
    summary = {
        "requests": float(answered + unanswered),
        "failures": float(status + unanswered),
        "avg_ms": float(fields["latency"][2]) / 1000.0,
        "p50_ms": _at(points, 50.0),
        "p90_ms": _at(points, 90.0),
        "p99_ms": _at(points, 99.0),
        "p999_ms": _at(points, 99.9),
        "max_ms": float(fields["latency"][1]) / 1000.0,
        # the answers behind the percentiles (wrk's coordinated-omission correction adds
        # synthetic samples on top; counting only the real ones keeps the intervals wide)
        "samples": float(answered),
    }
    read_kind = "read (connection closed after its answer: not counted)" if close else "read"
    errors = {
        "connect": connect,
        read_kind: read,
        "write": write,
        "status (4xx/5xx)": status,
        "timeout": timeout,
    }
    failures = pd.DataFrame(
        [
            {"Method": "GET", "Name": "(all)", "Error": f"wrk {kind} error", "Occurrences": n}
            for kind, n in errors.items()
            if n
        ],
        columns=["Method", "Name", "Error", "Occurrences"],
    )
    return summary, start, end, failures


def _at(points: pd.Series, pct: float) -> float:
    if points.empty:
        return math.nan
    return float(points[points.index >= pct - 1e-9].iloc[0])
