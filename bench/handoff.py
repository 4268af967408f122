"""Hand-off benchmark: hello world, 2 workers, wrk, new connection per request (and keep-alive).

Peers: Node.js cluster SCHED_RR and SCHED_NONE by default; ``--peers all`` adds uvicorn and
gunicorn (sync, gthread) when installed. Any other server, e.g. a clusterlab example, is added
with ``--target NAME='ARGV TEMPLATE'`` (``{port}``, ``{workers}``, ``{python}``, ``{root}``
are filled in; prefix ``env KEY=VAL`` for environment) or from Python via :func:`run_handoff`
with :func:`bench.peers.target` specs. All servers run at once on their own ports; each round
measures every server once, in a rotated order; medians, spread and ratio vs the baseline
(the first server) are printed and written to ``bench/results/handoff-<UTC time>.json``.

    .venv/bin/python -m bench.handoff                      # node-rr, node-none; conn: close
    .venv/bin/python -m bench.handoff --peers all --modes close,keepalive
    .venv/bin/python -m bench.handoff --target 'clusterlab-rr={python} examples/hello_cluster.py --workers {workers} --port {port}'
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench import peers, report
from bench.wrk import Stats, anchored_rounds, interleaved_rounds, run_wrk, wrk_argv

MODES = {"close": True, "keepalive": False}


def target_from_template(
    name: str, template: str, workers: int = 2, ready_text: str | None = None
) -> peers.ServerSpec:
    """``'env K=V prog args {port}'`` -> ServerSpec on a free port (the clusterlab hook);
    ready once ``ready_text`` (if given) was printed once per worker and ``GET /`` answers 200."""
    argv = shlex.split(template)
    env: dict[str, str] = {}
    if argv and argv[0] == "env":
        argv.pop(0)
        while argv and "=" in argv[0] and not argv[0].startswith("-"):
            key, _, val = argv.pop(0).partition("=")
            env[key] = val
    return peers.target(name, argv, peers.free_port(), workers, env, ready_text, workers)


@dataclass
class _Sampler:
    """One server's wrk sample; records each run, the foreign CPU % during it, and what the
    server cost: its primary's (root process's) CPU % of one core and RSS, the whole tree's CPU %.

    With ``quiet = (max %, wait s)`` and wait > 0, a sample during which other processes used
    more than max % of the CPUs is discarded and retaken (3 retries at most, and only while
    :data:`bench.report.QUIET` has budget left)."""

    url: str
    close: bool
    load: dict[str, Any]
    server_pids: list[int]
    quiet: tuple[float, float]
    pid: int = 0
    env: Mapping[str, str] | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)
    discarded: int = 0

    def __call__(self) -> float:
        max_pct, wait_s = self.quiet
        for attempt in range(1 + (3 if wait_s else 0)):
            before = report.wait_quiet(self.server_pids, max_pct, wait_s) if wait_s else None
            meter = report.ForeignCpu(self.server_pids)
            cost = report.ServerCost(self.pid) if self.pid else None
            t0 = time.monotonic()
            r = run_wrk(self.url, close=self.close, env=self.env, **self.load)
            foreign = meter.pct()
            report.QUIET.saw(foreign)
            if foreign < max_pct or attempt == 3 or not wait_s or not report.may_retake(t0):
                break
            self.discarded += 1
        self.runs.append(
            {
                **r.as_dict(),
                "foreign_cpu_pct": round(foreign, 1),
                "foreign_cpu_pct_before": before,
                **(cost.read() if cost else {}),
            }
        )
        return r.requests_per_s


def run_handoff(
    specs: Sequence[peers.ServerSpec],
    modes: Sequence[str] = ("close",),
    rounds: int = 3,
    duration_s: float = 5,
    connections: int = 50,
    threads: int = 1,
    warmup_s: float = 1,
    quiet: tuple[float, float] = (5.0, 0.0),
    results: dict[str, Any] | None = None,
    paired: Paired | Sequence[Paired] | None = None,
) -> dict[str, Any]:
    """Start every server (at once), warm each up (at once), measure each mode over rotated
    rounds, stop everything.

    With ``paired``, its servers are left out of the rotated rounds and measured against its
    anchor instead (:func:`bench.wrk.anchored_rounds`): each warmed up, then measured
    ``rounds`` times, each between two samples of the anchor, for ``paired.duration_s`` each;
    each gets ``paired`` (its per-round ratios to the anchor samples around it: median,
    min–max), and the anchor's samples of that phase are kept as ``paired.anchor_key``. A
    sequence of them runs one such phase per anchor, in turn.

    ``quiet = (max foreign CPU %, max wait s)``: before each sample wait until other processes
    use less than that share of the CPUs (no wait when max wait is 0); each run records the
    foreign CPU % during it. ``results`` (filled sample by sample) keeps what was
    measured if the run is interrupted."""
    results = {} if results is None else results
    groups = [paired] if isinstance(paired, Paired) else list(paired or ())
    with contextlib.ExitStack() as stack:
        servers = peers.start_all(specs)  # their start-ups overlap
        stack.callback(peers.stop_all, servers)  # and their shutdowns
        for mode in modes:
            warm_up([srv.spec.url for srv in servers], threads, connections, warmup_s, MODES[mode])
        pids = [srv.pid for srv in servers]

        def sampler(srv: peers.Server, mode: str, seconds: float) -> _Sampler:
            load = {"threads": threads, "connections": connections, "duration_s": seconds}
            return _Sampler(srv.spec.url, MODES[mode], load, pids, quiet, srv.pid)

        apart = {name for group in groups for name in group.names}
        for mode in modes:
            samplers = {
                srv.spec.name: sampler(srv, mode, duration_s)
                for srv in servers
                if srv.spec.name not in apart
            }
            results[mode] = {name: {"runs": smp.runs} for name, smp in samplers.items()}
            interleaved_rounds(samplers, rounds)
            by_name = {srv.spec.name: srv for srv in servers}
            for group in groups:
                _paired_phase(group, by_name, mode, rounds, sampler, results[mode])
            for name, smp in samplers.items():
                results[mode][name]["discarded_samples"] = smp.discarded
        for srv in servers:
            if srv.proc.poll() is not None:
                raise RuntimeError(f"{srv.spec.name} died during the run:\n{srv.log_tail()}")
    return summarize(results)


@dataclass(frozen=True)
class Paired:
    """Servers measured against an anchor server, each between two of its samples."""

    anchor: str
    names: tuple[str, ...]
    duration_s: float
    #: wrk's extra environment in this phase, every server alike (bench/sources.py: many client
    #: addresses, so the hash scheduler sees many clients)
    env: Mapping[str, str] | None = None
    #: Warm the anchor up first (unmeasured): for an anchor that idled while other phases ran
    warm_anchor: bool = False

    @property
    def anchor_key(self) -> str:
        return f"{self.anchor} (paired)"


def _paired_phase(
    paired: Paired,
    servers: dict[str, peers.Server],
    mode: str,
    rounds: int,
    sampler: Any,
    results: dict[str, Any],
) -> None:
    """The anchored blocks of :func:`run_handoff` into ``results``."""
    names = [n for n in paired.names if n in servers]
    fns = {paired.anchor_key: sampler(servers[paired.anchor], mode, paired.duration_s)}
    fns |= {n: sampler(servers[n], mode, paired.duration_s) for n in names}
    for smp in fns.values():
        smp.env = paired.env
    for name, smp in fns.items():
        results[name] = {"runs": smp.runs}

    def warm(name: str) -> None:
        smp = fns[name]
        load = smp.load
        warm_up(
            [smp.url], load["threads"], load["connections"], paired.duration_s, smp.close, smp.env
        )

    if paired.warm_anchor:
        warm(paired.anchor_key)
    _, ratios = anchored_rounds(fns, paired.anchor_key, rounds, warm)
    for name, st in ratios.items():
        results[name]["paired"] = {"anchor": paired.anchor_key, **st.as_dict()}
    for name, smp in fns.items():
        results[name]["discarded_samples"] = smp.discarded


def warm_up(
    urls: Sequence[str],
    threads: int,
    connections: int,
    seconds: float,
    close: bool,
    env: Mapping[str, str] | None = None,
) -> None:
    """One wrk run per URL, all at once (the servers' first connections and code paths before
    any sample; nothing is measured); each wrk is killed if it outlives its run by 15 s."""
    procs = [
        subprocess.Popen(
            wrk_argv(url, threads, connections, seconds, close),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **env} if env else None,
        )
        for url in urls
    ]
    deadline = time.monotonic() + seconds + 15
    try:
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


COST_KEYS = ("cpu_pct", "primary_cpu_pct", "primary_rss_mib", "server_cpu_pct")


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """Add median, spread, errors and worst foreign CPU % from each entry's runs (in place), and
    the medians of wrk's CPU % (``generator_cpu_pct``) and of the server's cost figures."""
    for by_name in results.values():
        for r in by_name.values():
            if r["runs"]:
                r.update(
                    Stats([x["requests_per_s"] for x in r["runs"]]).as_dict(),
                    errors=sum(x["errors"] for x in r["runs"]),
                    foreign_cpu_pct_max=max(x["foreign_cpu_pct"] for x in r["runs"]),
                )
                for key in COST_KEYS:
                    values = [x[key] for x in r["runs"] if x.get(key) is not None]
                    if values:
                        name = "generator_cpu_pct" if key == "cpu_pct" else key
                        r[name] = Stats(values).median
    return results


def print_table(results: dict[str, Any]) -> None:
    rows = []
    for mode, by_name in results.items():
        done = {name: r for name, r in by_name.items() if r["runs"]}
        base = next(iter(done.values()))["median"] if done else float("nan")
        for name, r in done.items():
            st = Stats(r["samples"])
            rows.append(
                [
                    mode,
                    name,
                    f"{st.median:,.0f}",
                    f"{min(st.samples):,.0f}–{max(st.samples):,.0f}",
                    f"{st.spread_pct:.1f}%",
                    r["errors"],
                    f"{r['foreign_cpu_pct_max']:.0f}%",
                    f"{st.median / base:.2f}",
                ]
            )
    print(
        report.table(
            [
                "mode",
                "server",
                "req/s median",
                "min–max",
                "spread",
                "errors",
                "foreign CPU max",
                "ratio",
            ],
            rows,
        )
    )
    if any(r.get("foreign_cpu_pct_max", 0) > 5 for m in results.values() for r in m.values()):
        print(
            "warning: other processes used > 5% of the CPUs during some samples; "
            "figures are suspect (see --wait-quiet)"
        )


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--peers",
        default="node-rr,node-none",
        help=f"comma list from {','.join(peers.PEERS)}, 'all' or 'none'",
    )
    ap.add_argument("--target", action="append", default=[], metavar="NAME=TEMPLATE")
    ap.add_argument("--ready-text", help="a --target is ready once this was printed per worker")
    ap.add_argument("--modes", default="close", help="comma list of close,keepalive")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5, help="seconds per wrk run")
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="3 rounds of 2 s")
    report.add_quiet_options(ap, "retake samples (3 retries) disturbed by more")
    ap.add_argument("--no-write", action="store_true")
    return ap


def _specs(
    ap: argparse.ArgumentParser, a: argparse.Namespace
) -> tuple[list[peers.ServerSpec], list[str]]:
    """The servers the arguments name (peers, then ``--target`` templates) and the skip notes of
    peers that are missing; an argument error when there is nothing to measure."""
    names = {"all": list(peers.PEERS), "none": []}.get(a.peers, a.peers.split(","))
    specs, notes = peers.peer_specs(names, a.workers)
    for t in a.target:
        name, sep, template = t.partition("=")
        if not sep:
            ap.error(f"--target wants NAME=TEMPLATE, got {t!r}")
        specs.append(target_from_template(name, template, a.workers, a.ready_text))
    if not specs:
        ap.error("nothing to measure")
    return specs, notes


def main(argv: Sequence[str] | None = None) -> int:
    ap = _parser()
    a = ap.parse_args(argv)
    if a.quick:
        a.rounds, a.duration = 3, 2
    modes = [m for m in a.modes.split(",") if m]
    if bad := [m for m in modes if m not in MODES]:
        ap.error(f"unknown mode(s) {bad}")
    specs, notes = _specs(ap, a)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    for note in notes:
        print(note)
    for s in specs:
        print(f"{s.name}: {s.command}")
    results: dict[str, Any] = {}
    status = _measure(specs, modes, a, results)
    summarize(results)
    if not any(r["runs"] for m in results.values() for r in m.values()):
        return status or 1
    print_table(results)
    if not a.no_write:
        _write(a, notes, specs, results, status == 0)
    return status


def _measure(
    specs: Sequence[peers.ServerSpec],
    modes: Sequence[str],
    a: argparse.Namespace,
    results: dict[str, Any],
) -> int:
    """:func:`run_handoff` into ``results``; the exit status: 0, 1 (an error), 130 or 143 (Ctrl-C
    or SIGTERM; every server is stopped and what was measured stays in ``results``)."""
    try:
        run_handoff(
            specs,
            modes,
            a.rounds,
            a.duration,
            a.connections,
            a.threads,
            quiet=(a.quiet_pct, a.wait_quiet),
            results=results,
        )
    except (KeyboardInterrupt, SystemExit) as exc:
        print("interrupted; all servers stopped", file=sys.stderr)
        return 143 if isinstance(exc, SystemExit) else 130
    except (RuntimeError, subprocess.SubprocessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _write(
    a: argparse.Namespace,
    notes: list[str],
    specs: Sequence[peers.ServerSpec],
    results: dict[str, Any],
    complete: bool,
) -> None:
    """``bench/results/handoff-<UTC time>.json``: machine, settings, servers and results."""
    path = report.write_json(
        "handoff",
        {
            "benchmark": "handoff",
            "machine": report.machine_facts(),
            "notes": notes,
            "settings": {
                "rounds": a.rounds,
                "duration_s": a.duration,
                "connections": a.connections,
                "threads": a.threads,
                "workers": a.workers,
                "wait_quiet_s": a.wait_quiet,
                "quiet_pct": a.quiet_pct,
            },
            "servers": {s.name: s.command for s in specs},
            "results": results,
            "complete": complete,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
