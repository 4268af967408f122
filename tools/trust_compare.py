"""`make trust-compare`: can `clusterlab compare` be trusted on this host? Runs known changes
through the real CLI and checks each outcome:

* calibration: ``clusterlab calibrate`` on a short ci-like scenario (``/cpu?ms=2``, rr, 1 worker
  by default, 8 repeats) with 2 A/A pairs; its first run is the quiet baseline ``trust``, saved
  with the calibrated thresholds;
* 5 A/A runs (the same scenario): at least 4 of 5 "unchanged", none a regression;
* 5 runs at +30 % CPU per request (``/cpu?ms=2.6``): a regression 5 of 5;
* 5 runs at +10 % (``/cpu?ms=2.2``): a regression or inconclusive 5 of 5, never "unchanged";
* 1 A/A run with a CPU burner beside it (a child process spinning on a core for the run's
  duration, stopped by pid after): inconclusive (its points are untrusted).

The runs are interleaved (A/A, +30 %, +10 %, A/A, ...) so that drift over the half hour hits
every case alike. Each compare is ``clusterlab compare trust RUN --json``; the table shows the
outcome, the exit status, the rps ratio with its interval and threshold, and why when a run was
not judged. Exit 0 when every target is met, 1 otherwise, 2 when the machine never got quiet.

Why 1 worker: on a 2-core machine the load generator shares the cores with the target; with one
worker the worker has a core to itself and its points are target-bound (the only points compare
judges), with two workers the CPUs are full of both and the verdict is "machine". ``--workers 2``
tries it anyway.

Before every run the script waits until no other load (locust, wrk, a clusterlab run or target,
a benchmark) is running and the CPUs are mostly idle (exit 2 when that takes over ``--wait``
seconds). A run that other processes still disturbed (its points' outside CPU over compare's
limit) is run again, up to ``--retries`` (2) times, and the "tries" column says so: its
"inconclusive" would say only that the machine was busy, not how compare judges. The burner run
is never rerun, and a calibration disturbed the same way is calibrated again. ``--quick`` (1 calibration pair, 1 run per case, 5
repeats) takes about 4 minutes and checks the plumbing, not the targets' counts. The full run
takes about 25 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = """\
name = "trust"
description = "trust-compare: /cpu?ms={ms}, rr, {workers} worker(s), {repeats} repeats"
[target]
kind = "builtin"
[sweep]
workers = [{workers}]
policies = ["rr"]
repeats = {repeats}
[workloads]
cpu = {{ "/cpu?ms={ms}" = 1 }}
[load]
users = {users}
warmup = 1
duration = {duration}
connection = "keep-alive"
processes = 1
"""
CASES = {"A/A": "2", "+30 %": "2.6", "+10 %": "2.2"}
OTHER_LOADS = ("locust", "wrk ", "clusterlab.cli", "clusterlab.lab.spawned", "bench.", "/bench/")
QUIET_CPU_PCT = 30.0


@dataclass
class Result:
    case: str
    run: str
    outcome: str
    status: int
    rps: str = "–"
    threshold: str = "–"
    why: str = ""
    tries: int = 1


@dataclass
class Settings:
    out: Path
    workers: int
    repeats: int
    duration: float
    users: int
    pairs: int
    runs: int
    wait: float
    retries: int = 2
    env: dict[str, str] = field(default_factory=dict)


def other_loads() -> list[str]:
    """Command lines of load or lab processes not started by this script."""
    mine = {p.pid for p in psutil.Process().children(recursive=True)} | {os.getpid()}
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if proc.info["pid"] not in mine and any(name in cmd for name in OTHER_LOADS):
            found.append(f"{proc.info['pid']}: {cmd[:80]}")
    return found


def wait_quiet(limit: float) -> None:
    """Until no other load runs and the CPUs are mostly idle; SystemExit(2) after ``limit`` s."""
    deadline = time.monotonic() + limit
    said = ""
    while True:
        loads = other_loads()
        busy = psutil.cpu_percent(interval=2.0)
        if not loads and busy < QUIET_CPU_PCT:
            return
        why = f"other loads: {loads[:2]}" if loads else f"CPUs {busy:.0f}% busy"
        if why != said:
            print(f"waiting for a quiet machine ({why})", file=sys.stderr, flush=True)
            said = why
        if time.monotonic() > deadline:
            print(f"trust-compare: the machine was not quiet within {limit:.0f} s ({why})")
            sys.exit(2)
        time.sleep(5)


def clusterlab(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clusterlab.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **settings.env},
        cwd=ROOT,
    )


def scenario_file(settings: Settings, ms: str) -> Path:
    path = settings.out / f"trust-ms{ms}.toml"
    if not path.exists():
        path.write_text(
            SCENARIO.format(
                ms=ms,
                workers=settings.workers,
                repeats=settings.repeats,
                users=settings.users,
                duration=settings.duration,
            )
        )
    return path


def calibrate_once(settings: Settings, folder: Path) -> tuple[bool, list[str]]:
    """One ``clusterlab calibrate`` into ``folder``: (saved, the lines it refused with)."""
    wait_quiet(settings.wait)
    done = clusterlab(
        settings,
        "calibrate",
        str(scenario_file(settings, CASES["A/A"])),
        "--name",
        "trust",
        "--pairs",
        str(settings.pairs),
        "--out",
        str(folder),
        "-q",
    )
    print(done.stdout, end="", flush=True)
    return done.returncode == 0, [line for line in done.stderr.splitlines() if line.strip()]


def calibrate(settings: Settings) -> str:
    """Calibrate baseline "trust", again after a calibration disturbed by other processes (up
    to ``retries`` times); refused otherwise, its first run is the baseline with the default
    thresholds. A line saying which."""
    for attempt in range(1, settings.retries + 2):
        folder = settings.out / f"calibrate-{attempt}"
        saved, refused = calibrate_once(settings, folder)
        if saved:
            return f"calibrated thresholds (attempt {attempt}, {folder.name}; table above)"
        if not any("outside CPU" in line for line in refused):
            break
        print(f"calibration disturbed by other processes: {refused[0]}", flush=True)
    kept = clusterlab(settings, "baseline", "save", "trust", str(folder / "a1"))
    if kept.returncode != 0:
        print(f"trust-compare: no baseline: {refused} {kept.stderr.strip()}", file=sys.stderr)
        sys.exit(1)
    shown = refused[:3] + ([f"... {len(refused) - 4} more"] if len(refused) > 4 else [])
    shown += refused[-1:] if len(refused) > 3 else []
    return "calibration refused, default thresholds:\n  " + "\n  ".join(shown)


def run_once(settings: Settings, case: str, name: str) -> tuple[Result, dict | None]:
    """One run of a case through `clusterlab run`, then `clusterlab compare trust RUN`."""
    wait_quiet(settings.wait)
    ms = CASES["A/A" if case == "burner" else case]
    run_dir = settings.out / "runs" / name
    proc = start_burner() if case == "burner" else None
    try:
        ran = clusterlab(
            settings, "run", str(scenario_file(settings, ms)), "--out", str(run_dir), "-q"
        )
    finally:
        if proc is not None:
            stop_burner(proc)
    if not (run_dir / "summary.json").is_file():
        return Result(case, name, "run failed", ran.returncode, why=ran.stderr[-200:]), None
    report = run_dir / "compare.json"
    done = clusterlab(settings, "compare", "trust", str(run_dir), "--json", str(report), "-q")
    if not report.is_file():
        return Result(case, name, "bad input", done.returncode, why=done.stderr[-200:]), None
    data = json.loads(report.read_text())["compare"]
    return result_of(case, name, done.returncode, data), data


def disturbed(data: dict | None) -> bool:
    """Did other processes take CPU during the current run (not the burner's own doing)?"""
    return data is not None and any(
        p["run"] == "current" and any("outside CPU" in r for r in p["reasons"])
        for p in data["untrusted_points"]
    )


def run_case(settings: Settings, case: str, name: str) -> Result:
    """A case's run; a run disturbed by other processes is run again (up to ``retries`` times,
    never the burner's): the point is compare's judgement of quiet runs, and a disturbed run's
    "inconclusive" says only that the machine was busy."""
    for attempt in range(1, settings.retries + 2):
        result, data = run_once(settings, case, name if attempt == 1 else f"{name}-try{attempt}")
        result.tries = attempt
        if case == "burner" or not disturbed(data):
            break
        print(f"  {result.run}: disturbed by other processes, again", flush=True)
    return result


def result_of(case: str, name: str, status: int, data: dict) -> Result:
    """The table's row from compare's JSON."""
    rps = next((r for r in data["rows"] if r["metric"] == "rps"), None)
    result = Result(case, name, data["outcome"], status)
    if rps is not None and rps["ratio"] is not None:
        interval = rps["interval"] or [None, None]
        result.rps = f"{rps['ratio']:.3f} [{_n(interval[0])}–{_n(interval[1])}]"
        result.threshold = f"{rps['threshold']:.1%} {rps['threshold_source']}"
    if data["outcome"] == "unchanged":
        return result
    why = []
    for run in ("baseline", "current"):
        points = [p for p in data["untrusted_points"] if p["run"] == run]
        if points:
            why.append(f"{run}: {len(points)} untrusted, e.g. {points[0]['reasons'][0]}")
    result.why = "; ".join(why) or data["headline"].split(": ", 1)[-1]
    return result


def _n(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def start_burner() -> subprocess.Popen[bytes]:
    """A child spinning on a core (it stops itself after an hour if never stopped)."""
    code = "import time\nend = time.monotonic() + 3600\nwhile time.monotonic() < end: pass\n"
    return subprocess.Popen([sys.executable, "-c", code], start_new_session=True)


def stop_burner(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def targets(results: list[Result], runs: int) -> list[tuple[str, bool, str]]:
    """(target, met, what was measured) for each target of the issue."""

    def count(case: str, *outcomes: str) -> int:
        return sum(r.case == case and r.outcome in outcomes for r in results)

    need_aa = max(runs - 1, 1) if runs >= 5 else runs
    aa = (count("A/A", "unchanged"), count("A/A", "regression"))
    return [
        (
            f"A/A: at least {need_aa} of {runs} unchanged, none a regression",
            aa[0] >= need_aa and aa[1] == 0,
            f"{aa[0]} unchanged, {aa[1]} regression",
        ),
        (
            f"+30 %: a regression {runs} of {runs}",
            count("+30 %", "regression") == runs,
            f"{count('+30 %', 'regression')} regression",
        ),
        (
            f"+10 %: a regression or inconclusive {runs} of {runs}, never unchanged",
            count("+10 %", "regression", "inconclusive") == runs,
            f"{count('+10 %', 'regression')} regression, "
            f"{count('+10 %', 'inconclusive')} inconclusive, {count('+10 %', 'unchanged')} unchanged",
        ),
        (
            "burner: inconclusive",
            count("burner", "inconclusive") == 1,
            next((r.outcome for r in results if r.case == "burner"), "not run"),
        ),
    ]


def table(results: list[Result]) -> str:
    from tabulate import tabulate

    rows = [
        [r.case, r.run, r.tries, r.outcome, r.status, r.rps, r.threshold, r.why[:140]]
        for r in results
    ]
    headers = ["case", "run", "tries", "outcome", "exit", "rps ratio [95 % interval]"]
    headers += ["threshold", "why (when not unchanged)"]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def parse(argv: list[str] | None) -> Settings:
    parser = argparse.ArgumentParser(prog="trust-compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 of each, 5 repeats (~4 min)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--runs", type=int, help="runs per case (default 5, --quick 1)")
    parser.add_argument("--out", type=Path, help="default reports/trust-compare-<time>")
    parser.add_argument("--wait", type=float, default=900, help="most seconds to wait for quiet")
    parser.add_argument(
        "--retries", type=int, default=2, help="runs again after other processes disturbed one"
    )
    args = parser.parse_args(argv)
    out = args.out or ROOT / "reports" / time.strftime("trust-compare-%Y%m%d-%H%M%S")
    out.mkdir(parents=True)
    return Settings(
        out=out.resolve(),
        workers=args.workers,
        repeats=5 if args.quick else 8,
        duration=1.5 if args.quick else 2.0,
        users=16,
        pairs=1 if args.quick else 2,
        runs=args.runs or (1 if args.quick else 5),
        wait=args.wait,
        retries=args.retries,
        env={"CLUSTERLAB_BASELINES": str(out.resolve() / "baselines")},
    )


def main(argv: list[str] | None = None) -> int:
    settings = parse(argv)
    started = time.monotonic()
    print(f"trust-compare: runs in {settings.out}", flush=True)
    calibration = calibrate(settings)
    print(calibration, flush=True)
    results = []
    for n in range(1, settings.runs + 1):
        for case in CASES:
            slug = {"A/A": "aa", "+30 %": "plus30", "+10 %": "plus10"}[case]
            results.append(run_case(settings, case, f"{slug}-{n}"))
            print(f"  {results[-1].case:<6} {results[-1].run:<9} {results[-1].outcome}", flush=True)
    results.append(run_case(settings, "burner", "burner-1"))
    checks = targets(results, settings.runs)
    lines = [
        f"## trust-compare ({settings.workers} worker(s), {settings.repeats} repeats, "
        f"{(time.monotonic() - started) / 60:.1f} min)",
        "",
        calibration,
        "",
        table(results),
        "",
        *[f"* {'met   ' if met else 'MISSED'} {text}: {seen}" for text, met, seen in checks],
    ]
    text = "\n".join(lines) + "\n"
    (settings.out / "trust-compare.md").write_text(text)
    print(text)
    return 0 if all(met for _, met, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
