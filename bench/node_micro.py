"""Node.js IPC and worker start-up figures (medians over rounds), with a multiprocessing.Pipe baseline.

Runs ``node bench/node/ipc.js SECONDS`` (round trips/s, one-way msgs/s both ways) and
``node bench/node/respawn.js N`` (fork -> 'online', fork -> 'listening', SIGKILL -> replacement
'listening'; each a median of N) for ``--rounds`` rounds, and the same IPC pattern over
``multiprocessing.Pipe`` (small dicts, pickled). Prints a table, writes
``bench/results/node-micro-<UTC time>.json``.

    .venv/bin/python -m bench.node_micro [--rounds 3] [--seconds 3] [--forks 20]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

from bench import report
from bench.peers import NODE_DIR, run_json
from bench.wrk import Stats


def run_node(script: str, arg: float, timeout: float) -> dict[str, Any]:
    """Run one bench/node script (bounded in time, stopped by pid on failure) and parse its JSON line."""
    return run_json(["node", str(NODE_DIR / script), f"{arg:g}"], timeout)


def _echo(conn: Connection) -> None:
    while (msg := conn.recv()) is not None:
        if msg == "flood":
            end = time.monotonic() + float(conn.recv())
            while time.monotonic() < end:
                conn.send({"t": "m", "v": "x"})
            conn.send(None)
        else:
            conn.send(msg)


def pipe_ipc(seconds: float) -> dict[str, float]:
    """multiprocessing.Pipe: round trips/s and child->parent one-way msgs/s, small dicts."""
    parent, child = mp.Pipe()
    proc = mp.Process(target=_echo, args=(child,), daemon=True)
    proc.start()
    try:
        n, t0 = 0, time.monotonic()
        while (dt := time.monotonic() - t0) < seconds:
            parent.send({"t": "ping", "seq": n, "v": "x"})
            parent.recv()
            n += 1
        rt = n / dt
        parent.send("flood")
        parent.send(str(seconds))
        n, t0 = 0, time.monotonic()
        while parent.recv() is not None:
            n += 1
        oneway = n / (time.monotonic() - t0)
        parent.send(None)
        proc.join(5)
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join(5)
    return {"roundtrips_per_s": rt, "w2p_msgs_per_s": oneway}


def guarded(job: Callable[[], dict[str, Any]], max_pct: float, wait_s: float) -> dict[str, Any]:
    """Run ``job`` and record the foreign CPU % during it; with ``wait_s`` > 0 wait for a quiet
    machine first and retake (3 retries at most, within :data:`bench.report.QUIET`'s budget) a
    run that other processes disturbed."""
    retaken = -1
    for _ in range(4 if wait_s else 1):
        retaken += 1
        if wait_s:
            report.wait_quiet([], max_pct, wait_s)
        meter = report.ForeignCpu([])
        t0 = time.monotonic()
        out = job()
        foreign = meter.pct()
        report.QUIET.saw(foreign)
        if foreign < max_pct or not wait_s or not report.may_retake(t0):
            break
    return {**out, "foreign_cpu_pct": round(foreign, 1), "retaken": retaken}


KEYS = {
    "ipc": ["roundtrips_per_s", "w2p_msgs_per_s", "p2w_msgs_per_s"],
    "respawn": ["fork_online_ms", "fork_listening_ms", "kill_listening_ms"],
    "pipe": ["roundtrips_per_s", "w2p_msgs_per_s"],
}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3, help="per IPC phase")
    ap.add_argument("--forks", type=int, default=20)
    ap.add_argument("--no-pipe", action="store_true", help="skip the multiprocessing.Pipe baseline")
    report.add_quiet_options(ap, "retake disturbed runs")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    if not shutil.which("node"):
        print("node not on PATH: Node.js figures skipped")
        return 0
    runs: dict[str, list[dict[str, Any]]] = {"ipc": [], "respawn": [], "pipe": []}
    jobs: dict[str, Callable[[], dict[str, Any]]] = {
        "ipc": lambda: run_node("ipc.js", a.seconds, a.seconds * 4 + 30),
        "respawn": lambda: run_node("respawn.js", a.forks, 150),
    }
    if not a.no_pipe:
        jobs["pipe"] = lambda: dict(pipe_ipc(a.seconds))
    for _ in range(a.rounds):
        for group, job in jobs.items():
            runs[group].append(guarded(job, a.quiet_pct, a.wait_quiet))
    summary: dict[str, dict[str, Any]] = {}
    rows = []
    for group, keys in KEYS.items():
        for key in keys if runs[group] else []:
            st = Stats([float(r[key]) for r in runs[group]])
            summary[f"{group}.{key}"] = st.as_dict()
            rows.append(
                [
                    f"{group}.{key}",
                    f"{st.median:,.1f}",
                    f"{min(st.samples):,.1f}–{max(st.samples):,.1f}",
                    f"{st.spread_pct:.1f}%",
                ]
            )
    print(report.table(["figure", "median", "min–max", "spread"], rows))
    worst = max(r["foreign_cpu_pct"] for v in runs.values() for r in v)
    if worst > a.quiet_pct:
        print(f"warning: other processes used up to {worst:.0f}% of the CPUs during a run")
    if not a.no_write:
        path = report.write_json(
            "node-micro",
            {
                "benchmark": "node-micro",
                "machine": report.machine_facts(),
                "settings": vars(a),
                "summary": summary,
                "runs": runs,
            },
        )
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
