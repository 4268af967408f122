"""``make trust``: does the lab's throughput agree with ``wrk`` on the same target, and does every
point that does not carry a verdict that says so?

For Node.js's cluster (``bench/node/hello_cluster.js``, a ``command`` target) and the lab's
builtin target, rr and none, 2 and 4 workers, keep-alive and a new connection per request: the
lab measures each point (locust, 16 users), then ``wrk -t1 -c16`` measures the same server
started alone. Printed per point: lab req/s / wrk req/s, the lab's verdict, the target's CPU
(% of the cores it may use). Fails (exit 1) when a point below 0.8 × wrk is marked target-bound,
or a point at ≥ 0.9 × wrk whose target used ≥ 90 % of its CPU is not. One exception, printed as
such: a point whose keep-alive connections the kernel split lopsidedly (policy none: one worker
held ≥ 1.25 × its share and was at its core while the target as a whole was not) is target-bound
at that split's rate, and wrk alone on a fresh server draws another split: not comparable.

Each lab point runs with both load engines (wrk, the default where it can measure, and locust).

Usage: python -m bench.trust [--duration S] [--only node|builtin] [--engines wrk,locust]
(about 8 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import peers, report
from bench.wrk import run_wrk
from clusterlab.lab.analysis.verdicts import TARGET_SATURATED_PCT, point_usage
from clusterlab.lab.config.scenario import parse_scenario
from clusterlab.lab.pipeline import run_lab
from clusterlab.lab.running.processes import free_port
from clusterlab.lab.running.progress import ConsoleProgress

CONNECTIONS = 16
TOO_LOW, HIGH = 0.8, 0.9
#: A split of connections with one worker holding this many times its share is lopsided.
UNEVEN = 1.25
NODE = str(peers.NODE_DIR / "hello_cluster.js")
TARGETS: dict[str, dict[str, Any]] = {
    "node": {
        "path": "/",
        "target": {
            "kind": "command",
            "command": [
                "env",
                "NODE_CLUSTER_SCHED_POLICY={policy}",
                "PORT={port}",
                "node",
                NODE,
                "{workers}",
            ],
            "ready_line": "^ready ",
            "ready_count": 1,
        },
    },
    "builtin": {"path": "/hello", "target": {"kind": "builtin"}},
}


@dataclass(frozen=True)
class Row:
    target: str
    connection: str
    engine: str
    policy: str
    workers: int
    lab_rps: float
    wrk_rps: float
    verdict: str
    target_cpu_share: float
    busiest_worker_pct: float = float("nan")
    max_mean_connections: float = float("nan")

    @property
    def ratio(self) -> float:
        return self.lab_rps / self.wrk_rps if self.wrk_rps else float("nan")

    def uneven_split(self) -> bool:
        """The lab's run drew a lopsided split of its keep-alive connections (the kernel's
        choice, policy none): one worker held ≥ UNEVEN × its share and was at its core while
        the target as a whole was not. Its rate is that split's; wrk alone, on a fresh server,
        draws its own split, so the two rates do not compare."""
        return (
            self.max_mean_connections >= UNEVEN
            and self.busiest_worker_pct >= TARGET_SATURATED_PCT
            and self.target_cpu_share < TARGET_SATURATED_PCT
        )

    def problem(self) -> str:
        """Why this row breaks a trust rule ("" when it does not)."""
        if self.verdict == "target" and self.ratio < TOO_LOW and not self.uneven_split():
            return f"target-bound at {self.ratio:.2f} × wrk (< {TOO_LOW})"
        saturated = self.target_cpu_share >= TARGET_SATURATED_PCT
        if self.ratio >= HIGH and saturated and self.verdict != "target":
            return f"{self.ratio:.2f} × wrk with the target's CPU saturated, but {self.verdict}"
        return ""


def lab_points(
    name: str, connection: str, engine: str, duration: int, out: Path
) -> list[dict[str, Any]]:
    """Run the lab over rr/none × 2/4 workers on one target with one engine; its points."""
    spec = TARGETS[name]
    data = {
        "name": f"trust-{name}-{connection}-{engine}",
        "target": spec["target"],
        "sweep": {"workers": [2, 4], "policies": ["rr", "none"]},
        "workloads": {"hello": {spec["path"]: 1}},
        "load": {
            "users": CONNECTIONS,
            "warmup": 1,
            "duration": duration,
            "connection": connection,
            "engine": engine,
        },
    }
    scenario = parse_scenario(data, str(out / "scenario.toml"), default_name=data["name"])
    lab = run_lab(scenario, out / data["name"], ConsoleProgress())
    return [dict(p) for p in lab.analysis.measured.to_dict("records")]


def wrk_rps(name: str, policy: str, workers: int, close: bool, duration: int) -> float:
    """wrk's req/s against the same server, started alone."""
    port = free_port()
    if name == "node":
        spec = peers.node_cluster(policy, port, workers)
    else:
        argv = ["{python}", "-m", "clusterlab.lab.spawned.target", "--workers", "{workers}"]
        argv += ["--policy", policy, "--port", "{port}"]
        spec = peers.target(f"builtin-{policy}", argv, port, workers, ready_text="serving")
        spec = peers.ServerSpec(**{**spec.__dict__, "path": "/hello"})
    with peers.start(spec):
        return run_wrk(spec.url, 1, CONNECTIONS, duration, close=close).requests_per_s


def measure(names: list[str], engines: list[str], duration: int, out: Path) -> list[Row]:
    """Every point with every engine, each beside wrk alone on the same server."""
    rows = []
    for name in names:
        for connection in ("keep-alive", "new"):
            for engine in engines:
                for point in lab_points(name, connection, engine, duration, out):
                    usage = point_usage(point, default_cpus=os.cpu_count() or 1)
                    share = 100 * usage.target / usage.target_capacity
                    policy, workers = str(point["policy"]), int(point["workers"])
                    wrk = wrk_rps(name, policy, workers, connection == "new", duration)
                    found = (point["rps"], wrk, point["verdict"], share)
                    split = (point["busiest_worker_cpu_pct"], point["max_mean_connections"])
                    rows.append(Row(name, connection, engine, policy, workers, *found, *split))
    return rows


def _problem_cell(row: Row) -> str:
    if row.problem():
        return row.problem()
    if row.uneven_split() and row.ratio < TOO_LOW:
        return (
            f"ok: lopsided split (one worker {row.max_mean_connections:.1f}× its share of "
            f"connections, at {row.busiest_worker_pct:.0f}% of a core): not comparable"
        )
    return "ok"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=3, help="whole seconds per measurement")
    parser.add_argument("--engines", default="wrk,locust", help="the lab's engines to try")
    parser.add_argument("--only", choices=sorted(TARGETS), help="one target")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="clusterlab-trust-") as tmp:
        names = [args.only] if args.only else list(TARGETS)
        rows = measure(names, args.engines.split(","), args.duration, Path(tmp))
    header = ["target", "conn", "engine", "policy", "workers", "lab req/s", "wrk req/s", "lab/wrk"]
    header += ["verdict", "target CPU % of its cores", "problem"]
    cells = [
        [r.target, r.connection, r.engine, r.policy, r.workers, f"{r.lab_rps:,.0f}"]
        + [f"{r.wrk_rps:,.0f}"]
        + [f"{r.ratio:.2f}", r.verdict, f"{r.target_cpu_share:.0f}", _problem_cell(r)]
        for r in rows
    ]
    print(report.table(header, cells))
    report.write_json(
        "trust", {"machine": report.machine_facts(), "rows": [r.__dict__ for r in rows]}
    )
    problems = [r for r in rows if r.problem()]
    print(
        f"trust: {len(problems)} of {len(rows)} points break a rule"
        if problems
        else f"trust: all {len(rows)} points carry a verdict consistent with wrk"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
