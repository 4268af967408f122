"""Every row of docs/targets.md's performance table, clusterlab beside its peer, in one run.

    .venv/bin/python -m bench.suite [--quick] [--only ROWS] [--out bench/results] [--wait-quiet S]
    .venv/bin/python -m bench.suite --quick --only scaling,lab-overhead
    .venv/bin/python -m bench.suite --scaling-workers 1,2,4,8,16      # a 16-core machine

Rows (``--only``, a comma list; ``handoff`` = rr,none,reuseport; without it, every row but
``reuseport``, which has no target):

* ``rr``, ``none``, ``reuseport``: hello world, 2 workers, ``wrk -t1 -c50``, a new connection per
  request, vs Node.js's cluster SCHED_RR / SCHED_NONE (:mod:`bench.handoff`);
  ``rr`` also has the commit before schedulers as a peer (a ``git worktree`` of it, ``--rr-base``;
  met when today's median is at least the old tree's slowest run);
* ``keepalive``: the same with keep-alive; clusterlab's fastest worker server (uvicorn with
  uvloop and httptools through ``serve_asgi``, SCHED_NONE) vs ``uvicorn --workers 2`` and Node.js;
* ``policies``: each built-in scheduler (least-conn, p2c, jiq, hash, hash-bounded, weighted, random) with a new
  connection per request, against clusterlab's ``rr`` (:mod:`bench.policies`; in the hand-off
  rows' run when ``rr`` runs too). Each is warmed up, then measured 3 times, each time between
  two ``rr`` samples (``--paired-duration``, 1 s); its ratio is the median of those per-round
  ratios, shown with their min–max. The rr rows with metrics on and with the old tree are
  measured the same way;
* with ``--refactor-base REV`` (``dc97950``: the commit before issue 15's refactor; left out by
  default since issue 15 closed, to keep ``make bench`` under 10 minutes), the hot-path rows
  (``rr``, ``none``, ``ipc``, ``respawn``) also meet that tree (:mod:`bench.refactor_base`), one ``git
  worktree`` of it for the whole run: its RR and SCHED_NONE servers each measured between two
  samples of today's (a paired phase per anchor), its ``bench/ipc.py`` and ``bench/respawn.py``
  alternated run by run with today's; met when the per-round ratios reach 1 (no slower beyond
  their spread);
* ``ipc``: round trips and one-way messages, primary ↔ one worker (``bench/ipc.py`` vs
  ``node/ipc.js``), alternating runs;
* ``respawn``: SIGKILL of a worker → replacement ``'listening'``, median of 8, per start method
  (``--respawn-start-methods``), vs Node.js ``fork()`` → ``'listening'`` (``bench/respawn.py`` vs
  ``node/respawn.js``), alternating runs;
* ``scaling``: ``/cpu?ms=2`` of the lab's built-in target (``python -m clusterlab.lab.spawned.target``),
  keep-alive wrk, 1 worker vs N workers (``--scaling-workers``, default 1 and
  ``available_parallelism()``): the speed-up against 0.9 × the cores left once wrk took its share;
* ``primary``: the primary's own CPU % and RSS under RR at the anchor load (new connection per
  request, hello, 2 workers), sampled every second for ``--primary-seconds`` (5 min; 20 s with
  ``--quick``): RSS start/end/max and slope; Node.js's primary from the RR rounds beside it;
* ``lab-overhead``: ``clusterlab run bench/scenarios/overhead.toml`` timed from launch to exit, ÷
  the sum of its points' load durations read back from its ``summary.json``;
* ``engines``: the lab's wrk and locust engines on the built-in target, one ``clusterlab run``
  per workload and engine with its point repeated ``--engine-repeats`` times (1 + ``--duration``
  s each).

Servers measured against each other run at once and are measured in rotated order over rounds
(A/B); figures are medians with min–max. Each row's wall time is printed as it ends and kept
(``row_seconds`` in the JSON, a line in the Markdown's header). A peer that is not installed
(node, uvicorn, gunicorn, wrk) is skipped with a note, never faked. Writes ``<out>/<UTC YYYYMMDD-HHMMSS>.json`` (settings,
machine facts, every raw run, medians, spread) and the same table as Markdown beside it (``.md``).
Every process started is stopped by pid, also on failure and Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import ipc, node_micro, peers, refactor_base, report, respawn, sources
from bench import policies as policy_rows
from bench.handoff import Paired, run_handoff, summarize, target_from_template
from bench.wrk import Stats, interleaved_rounds, run_wrk
from clusterlab import available_parallelism
from clusterlab.lab.running import phases as lab_phases

ROWS = (
    "rr",
    "none",
    "reuseport",
    "policies",
    "keepalive",
    "ipc",
    "respawn",
    "scaling",
    "primary",
    "lab-overhead",
    "engines",
)
ALIASES = {"handoff": ("rr", "none", "reuseport"), "all": ROWS}
#: What runs without --only: every row with a target (SCHED_REUSEPORT has none: --only handoff
#: or all adds it), so that `make bench` stays under 10 minutes on 2 cores.
DEFAULT_ROWS = tuple(r for r in ROWS if r != "reuseport")
POLICY_NAMES = {"rr": "SCHED_RR", "none": "SCHED_NONE", "reuseport": "SCHED_REUSEPORT"}
HELLO = "{python} bench/clusterlab_hello.py --workers {workers} --port {port} --policy "
READY = " listening on "
#: The same target with the primary's /metrics served (the rr-metrics row, docs/metrics.md).
METRICS_HELLO = HELLO.replace("clusterlab_hello.py", "clusterlab_hello_metrics.py")
SCENARIO = peers.BENCH / "scenarios" / "overhead.toml"
# Start methods of the respawn row, one row each ("clusterlab (exec)", ...); a method is passed
# to bench/respawn.py as CLUSTERLAB_START_METHOD. Add "forkserver" here once the core ships it.
RESPAWN_START_METHODS = ("exec", "forkserver")
# The primary's RSS counts as flat when its least-squares slope (after the first tenth of the run)
# stays within this many MiB per minute; judged only on a run of FLAT_JUDGED_S or longer.
RSS_FLAT_MIB_PER_MIN = 0.2
FLAT_JUDGED_S = 290.0
SCALING_EFFICIENCY = 0.9
_BASE_ROW = "RR hand-off vs the commit before schedulers"
#: The servers compared with clusterlab's rr alone, each measured between two of its samples
#: (ANCHOR_KEY holds rr's samples of that phase).
ANCHOR = "clusterlab-rr"
ANCHOR_KEY = Paired(ANCHOR, (), 0).anchor_key
PAIRED_WITH_RR = frozenset(
    {"clusterlab-rr-metrics", "clusterlab-rr-base", refactor_base.name("rr")}
    | {f"clusterlab-{name}" for name in policy_rows.SCHEDULERS}
)
HANDOFF_ROWS = {
    "rr": "RR hand-off, new connection per request",
    "none": "SCHED_NONE, same load",
    "reuseport": "SCHED_REUSEPORT, same load",
}
#: What each hot-path row is called where it meets the tree before issue 15's refactor.
REFACTOR_ROWS = {
    "rr": "RR hand-off",
    "none": "SCHED_NONE hand-off",
    "roundtrips_per_s": "IPC round trips",
    "w2p_msgs_per_s": "IPC one-way worker → primary",
    "p2w_msgs_per_s": "IPC one-way primary → worker",
}
POLICY_ROWS = tuple(f"{n} hand-off, new connection per request" for n in policy_rows.SCHEDULERS)


# --- targets, rows and rendering (pure) --------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A ratio target: ``op`` is ``">="`` or ``"<="``, ``bound`` the ratio."""

    op: str
    bound: float

    def met(self, ratio: float | None) -> bool | None:
        if ratio is None or math.isnan(ratio):
            return None
        return ratio >= self.bound if self.op == ">=" else ratio <= self.bound

    def __str__(self) -> str:
        bound = f"{self.bound:.2f}".rstrip("0")
        return f"{'≥' if self.op == '>=' else '≤'} {bound}{'0' if bound.endswith('.') else ''}×"


TARGETS = {
    "rr": Target(">=", 1.5),
    "none": Target(">=", 1.0),
    "keepalive-uvicorn": Target(">=", 1.0),
    "keepalive-node": Target(">=", 0.7),
    "ipc-roundtrips": Target(">=", 1.5),
    "ipc-oneway": Target(">=", 1.0),
    "respawn": Target("<=", 0.5),
    "lab-overhead": Target("<=", 1.15),
    "engines": Target(">=", 4.0),
    "policies": Target(">=", 0.9),
}
#: The lab's two load engines on one target: /hello (the load is the limit for locust) for req/s
#: per core of load CPU, and /cpu?ms=2 on 2 workers (the target is the limit for both) for rates
#: that should agree.
ENGINE_SCENARIO = """
[target]
kind = "builtin"
[sweep]
workers = [2]
repeats = {repeats}
[workloads]
{name} = {{ "{path}" = 1 }}
[load]
users = 16
warmup = 1
duration = {duration}
engine = "{engine}"
{cpus}"""
#: The /cpu row pins the target to one CPU and the load to the others, so the target (2 workers
#: sharing one CPU) is the limit for both engines: on shared CPUs locust's own CPU would be taken
#: from the target (a 2-core machine: ~10 % fewer req/s with locust) and the row would compare
#: the engines' costs again instead of their measurements.
ENGINE_CPU_SPLIT = '[cpus]\nsplit = "on"\nload = {load}\n'
ENGINE_AGREEMENT = 0.05


@dataclass
class Row:
    """One line of the table. ``target`` is a :class:`Target` (then ``met`` follows from
    ``ratio``), a text (a target that is not a ratio; set ``met`` yourself) or None."""

    what: str
    clusterlab: str
    peer: str = "—"
    peer_figure: str = "—"
    ratio: float | None = None
    target: Target | str | None = None
    met: bool | None = None
    note: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.target, Target) and self.met is None:
            self.met = self.target.met(self.ratio)

    def cells(self) -> list[str]:
        met = {True: "yes", False: "no", None: "—"}[self.met]
        return [
            self.what,
            self.clusterlab,
            self.peer,
            self.peer_figure,
            fmt_ratio(self.ratio),
            str(self.target) if self.target is not None else "—",
            f"{met} ({self.note})" if self.note else met,
        ]

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["target"] = str(self.target) if self.target is not None else None
        d["cells"] = self.cells()
        return d


HEADER = ["row", "clusterlab", "peer", "peer figure", "ratio", "target", "met?"]


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``, or None when either is missing or ``b`` is 0."""
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def fmt_ratio(r: float | None) -> str:
    return "—" if r is None or math.isnan(r) else f"{r:.2f}×"


def fmt_num(x: float, digits: int = 0) -> str:
    return f"{x:,.{digits}f}"


def fmt_stats(st: dict[str, Any] | None, unit: str = "", digits: int = 0) -> str:
    """``'14,383 req/s (11,900–14,826)'`` from a dict with median, min and max."""
    if not st or st.get("median") is None:
        return "—"
    unit = f" {unit}" if unit else ""
    med = fmt_num(st["median"], digits)
    if st.get("min") is None or len(st.get("samples", [0, 0])) < 2:
        return f"{med}{unit}"
    return f"{med}{unit} ({fmt_num(st['min'], digits)}–{fmt_num(st['max'], digits)})"


def stats(samples: Sequence[float]) -> dict[str, Any] | None:
    """Median, min, max, spread and samples, or None without samples."""
    return Stats([float(x) for x in samples]).as_dict() if samples else None


def paired_ratio(res: dict[str, Any], name: str, peer: str) -> dict[str, Any] | None:
    """``name`` over ``peer`` round by round, from their ratios to the anchor of the same
    moments (``paired``, :func:`bench.handoff.run_handoff`; the anchor's own is 1): median,
    min–max and the per-round ratios. None when either was not measured that way."""
    mine, theirs = _per_round(res, name), _per_round(res, peer)
    if mine is None or theirs is None:
        return None
    ratios = [a / b for a, b in zip(mine, theirs, strict=False) if b]
    return stats(ratios)


def _per_round(res: dict[str, Any], name: str) -> list[float] | None:
    """``name``'s per-round ratios to the anchor (the anchor's: 1 in every round)."""
    entry = res.get(name) or {}
    if entry.get("paired"):
        return [float(x) for x in entry["paired"]["samples"]]
    others = [r["paired"] for r in res.values() if r.get("paired", {}).get("anchor") == name]
    if entry.get("samples") and others:
        return [1.0] * max(len(p["samples"]) for p in others)
    return None


def paired_note(paired: dict[str, Any] | None) -> str:
    """``'per round 0.93–1.01 (3 paired rounds)'``, or nothing without paired ratios."""
    if not paired:
        return ""
    n = len(paired["samples"])
    return f"per round {paired['min']:.2f}–{paired['max']:.2f} ({n} paired rounds)"


def within_spread(paired: dict[str, Any] | None) -> bool | None:
    """No slower beyond the spread: the per-round ratios reach 1 (None without them)."""
    return None if not paired else paired["max"] >= 1.0


def round_ratios(mine: Sequence[float], theirs: Sequence[float]) -> dict[str, Any] | None:
    """``mine`` over ``theirs`` run by run (the runs of one round side by side): median,
    min–max and the ratios; None when either has no runs."""
    return stats([a / b for a, b in zip(mine, theirs, strict=False) if b])


def no_slower(paired: dict[str, Any] | None, lower_is_better: bool = False) -> bool | None:
    """No slower beyond the spread: a rate's per-round ratios reach 1 (a time's, with
    ``lower_is_better``, come down to 1); None without them."""
    if not paired:
        return None
    return paired["min"] <= 1.0 if lower_is_better else paired["max"] >= 1.0


def render_text(rows: Sequence[Row]) -> str:
    return report.table(HEADER, [r.cells() for r in rows])


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(
    rows: Sequence[Row],
    machine: dict[str, Any] | None = None,
    notes: Sequence[str] = (),
    command: str = "",
    when: str = "",
    wall_s: float | None = None,
    raw: str = "",
    row_seconds: dict[str, float] | None = None,
) -> str:
    """The table as Markdown, headed by the machine it came from, how it was made, and where its
    wall time went (``row_seconds``: seconds per step, in run order)."""
    lines = []
    if machine:
        lines.append(f"Machine: {machine_line(machine)}.")
    made = [
        f"`{command}`" if command else "",
        when,
        f"{wall_s:.0f} s" if wall_s else "",
        f"raw results `{raw}`" if raw else "",
    ]
    if any(made):
        lines.append("Run: " + ", ".join(m for m in made if m) + ".")
    if row_seconds:
        lines.append(f"Time per row: {time_line(row_seconds, wall_s)}.")
    if lines:
        lines.append("")
    lines.append(report.table(HEADER, [[_md_cell(c) for c in r.cells()] for r in rows], True))
    if notes:
        lines += ["", *[f"* {_md_cell(n)}" for n in notes]]
    return "\n".join(lines) + "\n"


def time_line(row_seconds: dict[str, float], wall_s: float | None = None) -> str:
    """``'handoff 130 s, primary 305 s; total 435 s (other 0 s)'``: seconds per step in run
    order, their total, and the wall time no step accounts for (start-up, writing results)."""
    parts = [f"{name} {secs:.0f} s" for name, secs in row_seconds.items()]
    total = sum(row_seconds.values())
    rest = f" (rest of the run {wall_s - total:.0f} s)" if wall_s is not None else ""
    return f"{', '.join(parts)}; total {total:.0f} s{rest}"


def machine_line(m: dict[str, Any]) -> str:
    """One line of machine facts (from :func:`bench.report.machine_facts`)."""
    load = m.get("load_average") or [float("nan")]
    return (
        f"{m.get('cpu_model', '?')}, {m.get('cpu_count', '?')} CPUs (available_parallelism "
        f"{m.get('available_parallelism', '?')}), {m.get('memory_gb', '?')} GiB, Linux "
        f"{m.get('kernel', '?')}, Python {m.get('python', '?')}, Node.js {m.get('node', '?')}, "
        f"{m.get('wrk', '?')}; load average at start {load[0]:.2f}"
    )


def rss_trend(samples: Sequence[tuple[float, float]], settle_frac: float = 0.1) -> dict[str, Any]:
    """RSS over a run from ``(seconds since start, MiB)`` samples: start, end, min, max, and the
    least-squares slope in MiB per minute over the samples after the first ``settle_frac`` of
    the run (allocator warm-up), with the growth over that part."""
    if not samples:
        return {}
    span = samples[-1][0] - samples[0][0]
    tail = [s for s in samples if s[0] - samples[0][0] >= settle_frac * span]
    if len(tail) < 2:
        tail = list(samples)
    slope = 0.0
    if len(tail) >= 2:
        mt = sum(t for t, _ in tail) / len(tail)
        mv = sum(v for _, v in tail) / len(tail)
        var = sum((t - mt) ** 2 for t, _ in tail)
        slope = 60 * sum((t - mt) * (v - mv) for t, v in tail) / var if var else 0.0
    values = [v for _, v in samples]
    return {
        "start_mib": values[0],
        "end_mib": values[-1],
        "min_mib": min(values),
        "max_mib": max(values),
        "slope_mib_per_min": slope,
        "span_s": span,
        "settled_from_s": tail[0][0] - samples[0][0],
        "settled_growth_mib": tail[-1][1] - tail[0][1],
    }


def rss_flat(trend: dict[str, Any]) -> bool | None:
    """Flat RSS (slope within :data:`RSS_FLAT_MIB_PER_MIN`); None when the run was too short."""
    if not trend or trend["span_s"] < FLAT_JUDGED_S:
        return None
    return abs(trend["slope_mib_per_min"]) <= RSS_FLAT_MIB_PER_MIN


def scaling_ideal(workers: int, parallelism: int, generator_cores: float) -> float:
    """The speed-up N workers can reach over 1: N, capped by the cores left once the load
    generator took its share (the target is :data:`SCALING_EFFICIENCY` × this)."""
    return max(1.0, min(float(workers), parallelism - max(0.0, generator_cores)))


def parse_only(text: str | None) -> list[str]:
    """``'scaling,lab-overhead'`` → rows in table order; ``handoff`` and ``all`` expand; none
    given → :data:`DEFAULT_ROWS`."""
    if not text:
        return list(DEFAULT_ROWS)
    wanted: set[str] = set()
    for name in (n.strip() for n in text.split(",")):
        if not name:
            continue
        if name in ALIASES:
            wanted.update(ALIASES[name])
        elif name in ROWS:
            wanted.add(name)
        else:
            raise ValueError(f"unknown row {name!r}; known: {', '.join([*ROWS, *ALIASES])}")
    return [r for r in ROWS if r in wanted]


def parse_workers(text: str | None, parallelism: int) -> list[int]:
    """``'1,2,4'`` → [1, 2, 4]; default 1 and ``parallelism``; 1 is always measured (the base)."""
    counts = {1, parallelism} if not text else {int(x) for x in text.split(",") if x.strip()}
    if any(n < 1 for n in counts):
        raise ValueError(f"worker counts must be ≥ 1, got {text!r}")
    return sorted(counts | {1})


# --- the run -----------------------------------------------------------------------------------


@dataclass
class Settings:
    rounds: int = 3
    duration_s: float = 2.0
    connections: int = 50
    workers: int = 2
    #: 0.5 and 8 (were 1 and 20): the time for the old tree's IPC and respawn runs
    ipc_seconds: float = 0.5
    micro_rounds: int = 3
    forks: int = 8
    respawn_start_methods: tuple[str, ...] = RESPAWN_START_METHODS
    #: Peers with a target; gunicorn-gthread (none) by --keepalive-peers.
    keepalive_peers: tuple[str, ...] = ("uvicorn", "node-rr")
    scaling_workers: tuple[int, ...] = ()
    scaling_ms: float = 2.0
    scaling_policy: str = "rr"
    primary_seconds: float = 300.0
    #: Seconds per wrk run of the servers compared with rr alone (metrics on, the old tree, the
    #: schedulers), each measured between two rr samples.
    paired_duration_s: float = 1.0
    rr_base: str | None = None
    #: The hot-path rows' old tree (RR and NONE hand-off, IPC, respawn); "" (the default)
    #: leaves it out.
    refactor_base: str = ""
    lab_runs: int = 1
    #: Repeats of each engine's point (the engines rows; their spread allows 2, docs/benchmarks.md).
    engine_repeats: int = 3
    wait_quiet_s: float = 0.0
    quiet_pct: float = 5.0
    quiet_budget_s: float = 10.0

    @property
    def quiet(self) -> tuple[float, float]:
        return (self.quiet_pct, self.wait_quiet_s)


QUICK = {
    "duration_s": 1.0,
    "ipc_seconds": 0.5,
    "micro_rounds": 2,
    "primary_seconds": 20.0,
}


@dataclass
class Suite:
    """One run of the selected rows: their table rows, raw results and notes."""

    settings: Settings
    rows: list[Row] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    interrupted: BaseException | None = None
    #: Wall seconds of each step run so far, in run order (the raw results' ``row_seconds``).
    row_seconds: dict[str, float] = field(default_factory=dict)
    #: The paired phase's wrk connected from many addresses (bench/sources.py)
    many_sources: bool = False
    #: Worktrees kept for the whole run (the tree before issue 15's refactor), and that tree.
    _trees: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    _refactor: tuple[str, Path | None] | None = None

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"note: {text}", flush=True)

    # -- wrk rows --

    def _wrk_missing(self, *whats: str) -> bool:
        if shutil.which("wrk"):
            return False
        self.rows += [Row(what, "skipped", note="wrk not installed") for what in whats]
        return True

    def _hello(self, policy: str) -> peers.ServerSpec:
        s = self.settings
        return target_from_template(f"clusterlab-{policy}", HELLO + policy, s.workers, READY)

    def _peers(self, names: Sequence[str]) -> tuple[list[peers.ServerSpec], dict[str, str]]:
        specs, notes = peers.peer_specs(names, self.settings.workers)
        skipped = {n.split(":")[0]: n.split(": skipped, ", 1)[-1] for n in notes}
        for n in notes:
            self.note(n)
        return specs, skipped

    def _wrk_rounds(
        self,
        key: str,
        specs: Sequence[peers.ServerSpec],
        mode: str,
        connections: int | None = None,
        paired: Sequence[Paired] = (),
    ) -> dict[str, Any]:
        """wrk over rotated rounds; the servers each of ``paired`` names apart, each between two
        samples of its anchor (their results get ``paired``: their ratios to the anchor)."""
        s = self.settings
        apart = {name for group in paired for name in group.names}
        rotated = [sp.name for sp in specs if sp.name not in apart]
        print(
            f"{key}: {', '.join(rotated)}: {s.rounds} rotated rounds of {s.duration_s:g} s; "
            + "".join(
                f"{', '.join(group.names)}: {s.rounds} rounds of {group.duration_s:g} s each, "
                f"each between two {group.anchor} samples; "
                for group in paired
            )
            + ("new connection per request" if mode == "close" else mode),
            flush=True,
        )
        results: dict[str, Any] = {}
        self.raw[key] = {"servers": {sp.name: sp.command for sp in specs}, "results": results}
        try:
            run_handoff(
                specs,
                (mode,),
                s.rounds,
                s.duration_s,
                connections or s.connections,
                quiet=s.quiet,
                results=results,
                paired=paired,
            )
        except (KeyboardInterrupt, SystemExit) as exc:  # rows from what was measured, then stop
            summarize(results)
            self.interrupted = exc
        return dict(results.get(mode, {}))

    def handoff(self, policies: Sequence[str], schedulers: bool = False) -> None:
        """RR, NONE, REUSEPORT, new connection per request, vs Node.js's cluster; with
        ``schedulers`` (and rr), every built-in scheduler in the same rounds (the policies rows):
        one start of the servers and one rr for all the rows that compare against it."""
        names = HANDOFF_ROWS
        schedulers = schedulers and "rr" in policies
        if self._wrk_missing(*(names[p] for p in policies), *(POLICY_ROWS if schedulers else ())):
            return
        node_names = [f"node-{p}" for p in policies if p in ("rr", "none")]
        node_specs, skipped = self._peers(node_names)
        specs = [self._hello(p) for p in policies] + node_specs
        if "rr" in policies:  # the same hand-off with metrics on, in the same rounds
            specs.append(
                target_from_template(
                    "clusterlab-rr-metrics", METRICS_HELLO + "rr", self.settings.workers, READY
                )
            )
        if schedulers:
            specs += policy_rows.scheduler_specs(self.settings.workers, with_rr=False)
        old = self.refactor_tree()
        for p in ("rr", "none"):  # today's beside the tree before issue 15's refactor
            if old is not None and p in policies:
                specs.append(refactor_base.hello_spec(self.settings.workers, old[1], p))
        with contextlib.ExitStack() as stack:
            base = self._rr_base(stack) if "rr" in policies else None
            if base is not None:  # today's RR beside the old tree's, in the same rounds
                specs.append(policy_rows.base_spec(self.settings.workers, base[1]))
            res = self._wrk_rounds("handoff", specs, "close", paired=self._paired_groups(specs))
        self._node_rows(policies, res, skipped)
        if base is not None:
            self._rr_base_row(res, base[0])
        if old is not None:
            self._refactor_handoff_rows(policies, res, old[0])
        if "rr" in policies:
            self._rr_metrics_row(res)
        if schedulers:
            self._policy_rows(res)

    def _node_rows(
        self, policies: Sequence[str], res: dict[str, Any], skipped: dict[str, str]
    ) -> None:
        """The hand-off rows against Node.js's cluster (per round when paired with rr)."""
        names = HANDOFF_ROWS
        for p in policies:
            cl = res.get(f"clusterlab-{p}")
            figure = fmt_stats(cl, "req/s")
            if p == "reuseport":
                self.rows.append(
                    Row(names[p], figure, "Node.js", "(Node.js 20's cluster has no such policy)")
                )
                continue
            peer = f"Node.js {POLICY_NAMES[p]}"
            if f"node-{p}" in skipped:
                self.rows.append(
                    Row(
                        names[p],
                        figure,
                        peer,
                        f"skipped: {skipped[f'node-{p}']}",
                        target=TARGETS[p],
                    )
                )
                continue
            node = res.get(f"node-{p}")
            paired = paired_ratio(res, f"clusterlab-{p}", f"node-{p}")
            self.rows.append(
                Row(
                    names[p],
                    figure,
                    peer,
                    fmt_stats(node),
                    _med(paired) if paired else ratio(_med(cl), _med(node)),
                    TARGETS[p],
                    note=paired_note(paired),
                )
            )

    def policies(self) -> None:
        """Each built-in scheduler against rr, new connection per request, a run of their own
        (when the hand-off rows do not take them into theirs)."""
        if self._wrk_missing(*POLICY_ROWS):
            return
        specs = policy_rows.scheduler_specs(self.settings.workers)
        res = self._wrk_rounds("policies", specs, "close", paired=self._paired_groups(specs))
        self._policy_rows(res)

    def _paired(self, specs: Sequence[peers.ServerSpec]) -> Paired | None:
        """What compares with clusterlab's rr alone (metrics on, the old tree, the schedulers):
        measured between two rr samples each; None without rr."""
        names = [sp.name for sp in specs]
        if ANCHOR not in names:
            return None
        apart = tuple(n for n in names if n in PAIRED_WITH_RR)
        # hash keys on the client's address: every server of the phase loaded from many
        env = sources.preload_env() if "clusterlab-hash" in apart else None
        self.many_sources = env is not None
        return Paired(ANCHOR, apart, self.settings.paired_duration_s, env)

    def _paired_groups(self, specs: Sequence[peers.ServerSpec]) -> list[Paired]:
        """The paired phases: the one against rr (:meth:`_paired`), and today's SCHED_NONE
        against the old tree's when both run (each between two samples of today's)."""
        groups = [p for p in (self._paired(specs),) if p is not None]
        names = {sp.name for sp in specs}
        old_none = refactor_base.name("none")
        if {"clusterlab-none", old_none} <= names:
            env = groups[0].env if groups else None
            # after the rr phase: today's SCHED_NONE idled through it, so it is warmed up first
            duration = self.settings.paired_duration_s
            groups.append(Paired("clusterlab-none", (old_none,), duration, env, warm_anchor=True))
        return groups

    def refactor_tree(self) -> tuple[str, Path] | None:
        """The commit before issue 15's refactor and a worktree of it, made once per run
        (removed by :meth:`close`); None when left out (``--refactor-base ''``) or when there is
        none (noted)."""
        if self._refactor is None:
            rev = self.settings.refactor_base
            self._refactor = ("", None)
            if rev:
                try:
                    tree = self._trees.enter_context(policy_rows.worktree(rev))
                    self._refactor = (rev, tree)
                except ValueError as exc:
                    self.note(f"no tree before issue 15's refactor ({rev}): {exc}")
        made, path = self._refactor
        return (made, path) if path is not None else None

    def close(self) -> None:
        """Remove the worktrees this run made."""
        self._trees.close()

    def _refactor_handoff_rows(
        self, policies: Sequence[str], res: dict[str, Any], rev: str
    ) -> None:
        """Today's RR and SCHED_NONE against the old tree's, per round (the old between two
        samples of today's): met when the paired ratios reach 1."""
        anchors = {"rr": ANCHOR_KEY, "none": Paired("clusterlab-none", (), 0).anchor_key}
        for p in ("rr", "none"):
            if p not in policies:
                continue
            today, old = res.get(anchors[p]), res.get(refactor_base.name(p))
            paired = paired_ratio(res, anchors[p], refactor_base.name(p))
            self.rows.append(
                Row(
                    f"{REFACTOR_ROWS[p]} vs {rev} (before issue 15's refactor)",
                    fmt_stats(today, "req/s"),
                    f"clusterlab {rev} ({p})",
                    fmt_stats(old),
                    _med(paired),
                    "no slower beyond its spread",
                    met=within_spread(paired),
                    note=paired_note(paired),
                )
            )

    def _policy_rows(self, res: dict[str, Any]) -> None:
        """A row per built-in scheduler against clusterlab-rr of the same rounds (``res``)."""
        rr = res.get(ANCHOR_KEY)
        for name, what in zip(policy_rows.SCHEDULERS, POLICY_ROWS, strict=True):
            figure = res.get(f"clusterlab-{name}")
            paired = paired_ratio(res, f"clusterlab-{name}", ANCHOR_KEY)
            notes = (paired_note(paired), policy_rows.note(name, self.many_sources))
            self.rows.append(
                Row(
                    what,
                    fmt_stats(figure, "req/s"),
                    "clusterlab rr",
                    fmt_stats(rr),
                    _med(paired),
                    TARGETS["policies"],
                    note="; ".join(n for n in notes if n),
                )
            )

    def _rr_base(self, stack: contextlib.ExitStack) -> tuple[str, Path] | None:
        """The commit before schedulers and a worktree of it (removed with `stack`); None,
        with a skipped row, when there is none."""
        try:
            base = self.settings.rr_base or policy_rows.baseline_commit()
            return base, stack.enter_context(policy_rows.worktree(base))
        except ValueError as exc:
            self.rows.append(Row(_BASE_ROW, "skipped", note=f"no baseline tree: {exc}"))
            return None

    def _rr_base_row(self, res: dict[str, Any], base: str) -> None:
        """Today's RR against the old tree's, per round (the old tree between two rr samples):
        met when its paired ratios reach 1 (no slower beyond their spread)."""
        rr, old = res.get(ANCHOR_KEY), res.get("clusterlab-rr-base")
        paired = paired_ratio(res, ANCHOR_KEY, "clusterlab-rr-base")
        self.rows.append(
            Row(
                _BASE_ROW,
                fmt_stats(rr, "req/s"),
                f"clusterlab {base} (rr)",
                fmt_stats(old),
                _med(paired),
                "no slower beyond its spread",
                met=within_spread(paired),
                note=paired_note(paired),
            )
        )

    def _rr_metrics_row(self, res: dict[str, Any]) -> None:
        """RR with the primary's /metrics on against off, per round (metrics on between two
        samples with them off): met when its paired ratios reach 1 (no slower beyond their
        spread)."""
        rr, on = res.get(ANCHOR_KEY), res.get("clusterlab-rr-metrics")
        paired = paired_ratio(res, "clusterlab-rr-metrics", ANCHOR_KEY)
        self.rows.append(
            Row(
                "RR hand-off, metrics on (docs/metrics.md)",
                fmt_stats(on, "req/s"),
                "clusterlab rr, metrics off",
                fmt_stats(rr),
                _med(paired),
                "no slower beyond its spread",
                met=within_spread(paired),
                note=paired_note(paired),
            )
        )

    def keepalive(self) -> None:
        """Keep-alive hello: clusterlab's fastest worker server vs uvicorn --workers and Node.js."""
        what = "keep-alive hello (SCHED_NONE, serve_asgi)"
        if self._wrk_missing(what):
            return
        peer_specs, skipped = self._peers(self.settings.keepalive_peers)
        res = self._wrk_rounds("keepalive", [self._hello("none"), *peer_specs], "keepalive")
        cl = res.get("clusterlab-none")
        labels = {
            "uvicorn": ("`uvicorn --workers 2`", TARGETS["keepalive-uvicorn"]),
            "node-rr": ("Node.js SCHED_RR", TARGETS["keepalive-node"]),
            "node-none": ("Node.js SCHED_NONE", TARGETS["keepalive-node"]),
            "gunicorn-gthread": ("gunicorn gthread, 2 × 8 threads", None),
            "gunicorn-sync": ("gunicorn sync, 2 workers", None),
        }
        for name in self.settings.keepalive_peers:
            label, target = labels.get(name, (name, None))
            if name in skipped:
                self.rows.append(
                    Row(
                        what,
                        fmt_stats(cl, "req/s"),
                        label,
                        f"skipped: {skipped[name]}",
                        target=target,
                    )
                )
                continue
            peer = res.get(name)
            self.rows.append(
                Row(
                    what,
                    fmt_stats(cl, "req/s"),
                    label,
                    fmt_stats(peer),
                    ratio(_med(cl), _med(peer)),
                    target,
                )
            )

    def scaling(self) -> None:
        """/cpu?ms=2 with 1 worker vs N workers; the speed-up vs 0.9 × the cores wrk left."""
        s = self.settings
        path = f"/cpu?ms={s.scaling_ms:g}"
        if self._wrk_missing(f"CPU-bound `{path}` speed-up"):
            return
        parallelism = available_parallelism()
        counts = list(s.scaling_workers) or parse_workers(None, parallelism)
        if counts == [1]:
            self.rows.append(
                Row(f"CPU-bound `{path}` speed-up", "skipped", note="available_parallelism() is 1")
            )
            return
        specs = self._scaling_targets(counts, path)
        res = self._wrk_rounds("scaling", specs, "keepalive", max(s.connections, 4 * counts[-1]))
        base = res.get("clusterlab-1w")
        self.raw["scaling"].update(parallelism=parallelism, path=path, policy=s.scaling_policy)
        for n in counts[1:]:
            self._scaling_row(n, res.get(f"clusterlab-{n}w"), base, parallelism, path)

    def _scaling_targets(self, counts: Sequence[int], path: str) -> list[peers.ServerSpec]:
        """The lab's built-in target with each of ``counts`` workers, each on a free port."""
        argv = [
            "{python}",
            "-m",
            "clusterlab.lab.spawned.target",
            "--workers",
            "{workers}",
            "--policy",
            self.settings.scaling_policy,
            "--port",
            "{port}",
        ]
        return [
            peers.target(
                f"clusterlab-{n}w",
                argv,
                peers.free_port(),
                n,
                ready_text="serving http://",
                path=path,
            )
            for n in counts
        ]

    def _scaling_row(
        self,
        n: int,
        r: dict[str, Any] | None,
        base: dict[str, Any] | None,
        parallelism: int,
        path: str,
    ) -> None:
        """The row of ``n`` workers (results ``r``) against 1 (``base``): the speed-up, and the
        target it has once wrk took its cores; its figures also go to the raw results."""
        s = self.settings
        gen_cores = (r or {}).get("generator_cpu_pct", 0.0) / 100
        ideal = scaling_ideal(n, parallelism, gen_cores)
        target = SCALING_EFFICIENCY * ideal
        speedup = ratio(_med(r), _med(base))
        mark = " = available_parallelism()" if n == parallelism else ""
        cost = (
            f"server {r.get('server_cpu_pct', 0) / 100:.2f} cores, wrk {gen_cores:.2f}" if r else ""
        )
        self.rows.append(
            Row(
                f"CPU-bound `{path}`, {n} workers{mark} vs 1 ({s.scaling_policy})",
                fmt_stats(r, "req/s"),
                "1 worker",
                fmt_stats(base),
                speedup,
                f"≥ {target:.2f}× (0.9 × {ideal:.2f})",
                None if speedup is None else speedup >= target,
                cost,
            )
        )
        self.raw["scaling"].setdefault("rows", {})[n] = {
            "speedup": speedup,
            "ideal": ideal,
            "target": target,
            "generator_cores": gen_cores,
            "plain_target": SCALING_EFFICIENCY * n,
        }

    # -- IPC and respawn --

    def _alternate(
        self,
        key: str,
        jobs: dict[str, Callable[[], dict[str, Any]]],
        rounds: int,
        retake: bool = True,
    ) -> dict[str, list[dict[str, Any]]]:
        """Run every job once per round, rotating the order; each run guarded by the quiet check
        (without ``retake``: a wait for a quiet machine before it, its foreign CPU % recorded,
        never retaken)."""
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in jobs}
        self.raw[key] = {"runs": runs}
        s = self.settings
        print(f"{key}: {', '.join(jobs)}; {rounds} alternating rounds", flush=True)

        def once(name: str) -> Callable[[], float]:
            def run() -> float:
                wait = s.wait_quiet_s if retake else 0.0
                if s.wait_quiet_s and not retake:
                    report.wait_quiet([], s.quiet_pct, s.wait_quiet_s)
                runs[name].append(node_micro.guarded(jobs[name], s.quiet_pct, wait))
                return 0.0

            return run

        try:
            interleaved_rounds({name: once(name) for name in jobs}, rounds)
        except (KeyboardInterrupt, SystemExit) as exc:  # rows from what was measured, then stop
            self.interrupted = exc
        return runs

    def ipc(self) -> None:
        """Round trips and one-way messages between the primary and one worker, vs Node.js."""
        s = self.settings
        timeout = s.ipc_seconds * 4 + 30
        jobs: dict[str, Callable[[], dict[str, Any]]] = {
            "clusterlab": lambda: ipc.measure(s.ipc_seconds, timeout)
        }
        node = shutil.which("node") is not None
        if node:
            jobs["node"] = lambda: node_micro.run_node("ipc.js", s.ipc_seconds, timeout)
        else:
            self.note("node-ipc: skipped, node not on PATH")
        old = self.refactor_tree()
        if old is not None:  # the tree before issue 15's refactor, alternated run by run
            args = [f"{s.ipc_seconds:g}"]
            jobs[f"clusterlab {old[0]}"] = refactor_base.script_job(old[1], "ipc.py", args, timeout)
        runs = self._alternate("ipc", jobs, s.micro_rounds)
        oneway = TARGETS["ipc-oneway"]
        figures = [
            (
                "IPC round trips, primary ↔ worker",
                "roundtrips_per_s",
                "round trips/s",
                TARGETS["ipc-roundtrips"],
            ),
            ("IPC one-way, worker → primary", "w2p_msgs_per_s", "msgs/s", oneway),
            ("IPC one-way, primary → worker", "p2w_msgs_per_s", "msgs/s", oneway),
        ]
        summary = self.raw["ipc"]["summary"] = {}
        for what, key, unit, target in figures:
            cl = stats([r[key] for r in runs["clusterlab"]])
            peer = stats([r[key] for r in runs.get("node", [])]) if node else None
            summary[key] = {"clusterlab": cl, "node": peer}
            self.rows.append(
                Row(
                    what,
                    fmt_stats(cl, unit),
                    "Node.js",
                    fmt_stats(peer) if node else "skipped: node not on PATH",
                    ratio(_med(cl), _med(peer)),
                    target,
                )
            )
        if old is not None:
            for _, key, unit, _ in figures:
                self._refactor_micro_row(REFACTOR_ROWS[key], runs, "clusterlab", old[0], key, unit)

    def _refactor_micro_row(
        self,
        what: str,
        runs: dict[str, list[dict[str, Any]]],
        today: str,
        rev: str,
        key: str,
        unit: str,
        lower_is_better: bool = False,
    ) -> None:
        """Today's ``key`` against the old tree's, round by round (the two alternated runs of a
        round): met when the per-round ratios reach 1 (no slower beyond their spread)."""
        mine, theirs = runs.get(today, []), runs.get(f"{today} {rev}", [])
        paired = round_ratios([r[key] for r in mine], [r[key] for r in theirs])
        digits = 1 if unit == "ms" else 0
        self.rows.append(
            Row(
                f"{what} vs {rev} (before issue 15's refactor)",
                fmt_stats(stats([r[key] for r in mine]), unit, digits),
                f"clusterlab {rev}",
                fmt_stats(stats([r[key] for r in theirs]), unit, digits),
                _med(paired),
                "no slower beyond its spread",
                met=no_slower(paired, lower_is_better),
                note=paired_note(paired).replace("paired rounds", "alternated rounds"),
            )
        )

    def respawn(self) -> None:
        """SIGKILL → replacement 'listening' per start method, vs Node.js fork() → 'listening'."""
        s = self.settings
        jobs: dict[str, Callable[[], dict[str, Any]]] = {}
        old = self.refactor_tree()
        for method in s.respawn_start_methods:
            jobs[f"clusterlab ({method})"] = lambda m=method: respawn.measure(
                s.forks, start_method=m
            )
            if old is not None:  # the tree before issue 15's refactor, alternated run by run
                jobs[f"clusterlab ({method}) {old[0]}"] = refactor_base.script_job(
                    old[1], "respawn.py", [str(s.forks)], 150, {"CLUSTERLAB_START_METHOD": method}
                )
        node = shutil.which("node") is not None
        if node:
            jobs["node"] = lambda: node_micro.run_node("respawn.js", s.forks, 150)
        else:
            self.note("node-respawn: skipped, node not on PATH")
        # Never retaken: its own workers (killed, forked, a fork server) count as others in the
        # check, so a retake meets the same figure again and spends the run's quiet budget.
        runs = self._alternate("respawn", jobs, s.micro_rounds, retake=False)
        peer = stats([r["fork_listening_ms"] for r in runs.get("node", [])])
        summary = self.raw["respawn"]["summary"] = {
            "node": {
                k: stats([r[k] for r in runs.get("node", [])])
                for k in ("fork_online_ms", "fork_listening_ms", "kill_listening_ms")
            }
        }
        for method in s.respawn_start_methods:
            name = f"clusterlab ({method})"
            got = {r.get("start_method", "exec") for r in runs[name]}
            cl = stats([r["kill_listening_ms"] for r in runs[name]])
            summary[name] = {
                k: stats([r[k] for r in runs[name]])
                for k in ("fork_online_ms", "fork_listening_ms", "kill_listening_ms")
            }
            what = f"respawn: SIGKILL → replacement `'listening'` (median of {s.forks}), {name}"
            if runs[name] and got != {method}:
                self.rows.append(Row(what, "skipped", note=f"the core ran start method {got}"))
                continue
            self.rows.append(
                Row(
                    what,
                    fmt_stats(cl, "ms", 1),
                    "Node.js `fork()` → `'listening'`",
                    fmt_stats(peer, "ms", 1) if node else "skipped: node not on PATH",
                    ratio(_med(cl), _med(peer)),
                    TARGETS["respawn"],
                )
            )
            if old is not None:
                self._refactor_micro_row(
                    f"respawn, {name}", runs, name, old[0], "kill_listening_ms", "ms", True
                )

    # -- the primary's own cost --

    def primary(self) -> None:
        """The primary's CPU % and RSS under RR at the anchor load, sampled every second."""
        what = "primary's own cost under RR (anchor load)"
        if self._wrk_missing(what):
            return
        s = self.settings
        handoff = self.raw.get("handoff", {}).get("results", {}).get("close", {})
        if "clusterlab-rr" not in handoff:
            # The side-by-side CPU figures come from A/B rounds; take them here if rr did not run.
            node_specs, _ = self._peers(["node-rr"])
            res = self._wrk_rounds("primary_ab", [self._hello("rr"), *node_specs], "close")
            if self.interrupted:
                return
        else:
            res = handoff
        long_run = self._primary_long(s.primary_seconds)
        cl, node = res.get("clusterlab-rr", {}), res.get("node-rr")
        self.rows.append(
            Row(
                "primary's own cost under RR, anchor load: CPU, RSS",
                f"{_fmt(cl.get('primary_cpu_pct'))} % of a core, {_fmt(cl.get('primary_rss_mib'))} MiB",
                "Node.js SCHED_RR primary",
                f"{_fmt(node.get('primary_cpu_pct'))} %, {_fmt(node.get('primary_rss_mib'))} MiB"
                if node
                else "skipped: node not on PATH",
                ratio(cl.get("primary_cpu_pct"), (node or {}).get("primary_cpu_pct")),
                "reported",
                note="CPU ratio; medians of the A/B rounds",
            )
        )
        trend, cpu = long_run["rss"], long_run["cpu_pct"]
        flat = rss_flat(trend)
        self.rows.append(
            Row(
                f"primary's RSS over a {s.primary_seconds:g} s RR run (same load)",
                f"{trend['start_mib']:.1f} → {trend['end_mib']:.1f} MiB (max {trend['max_mib']:.1f}), "
                f"{round(trend['slope_mib_per_min'], 3) + 0.0:+.3f} MiB/min; CPU {_fmt(_med(cpu))} %",
                target=f"flat over 5 min (≤ {RSS_FLAT_MIB_PER_MIN:g} MiB/min)",
                met=flat,
                note=""
                if flat is not None
                else f"judged on ≥ 5 min runs, this one {s.primary_seconds:g} s",
            )
        )

    def _primary_long(self, seconds: float) -> dict[str, Any]:
        s = self.settings
        spec = self._hello("rr")
        print(
            f"primary: {spec.name} under wrk -t1 -c{s.connections}, new connection per request, "
            f"for {seconds:g} s; the primary sampled every second",
            flush=True,
        )
        out: dict[str, Any] = {"server": spec.command, "seconds": seconds}
        self.raw["primary"] = out
        with peers.start(spec) as srv:
            run_wrk(spec.url, 1, s.connections, 1, close=True)  # warm-up
            if s.wait_quiet_s:
                report.wait_quiet([srv.pid], s.quiet_pct, s.wait_quiet_s)
            meter = report.ForeignCpu([srv.pid])
            with _ProcSampler(srv.pid) as sampler:
                r = run_wrk(spec.url, 1, s.connections, seconds, close=True)
            if srv.proc.poll() is not None:
                raise RuntimeError(f"{spec.name} died during the run:\n{srv.log_tail()}")
            out["foreign_cpu_pct"] = round(meter.pct(), 1)
        out["wrk"] = r.as_dict()
        out["samples"] = sampler.samples
        out["cpu_pct"] = stats([x["primary_cpu_pct"] for x in sampler.samples[1:]])
        out["rss"] = rss_trend([(x["t"], x["primary_rss_mib"]) for x in sampler.samples])
        return out

    # -- the lab's load engines --

    def engines(self) -> None:
        """wrk's and locust's req/s per core of load CPU on /hello; their rates on /cpu?ms=2."""
        s = self.settings
        duration = max(1, round(s.duration_s))
        runs: dict[str, list[dict[str, float]]] = {}
        self.raw["engines"] = runs
        # One `clusterlab run` per workload and engine, its point repeated (one
        # start-up, target and report per run); the engines' order turns between the workloads.
        for name, path, order in (
            ("hello", "/hello", ("wrk", "locust")),
            ("cpu", "/cpu?ms=2", ("locust", "wrk")),
        ):
            for engine in order:
                print(
                    f"engines: {name} with {engine}, {s.engine_repeats} repeats of 1 + {duration} s",
                    flush=True,
                )
                if s.wait_quiet_s:
                    report.wait_quiet([], s.quiet_pct, s.wait_quiet_s)
                runs[f"{name}-{engine}"] = _engine_run(
                    name, path, engine, duration, s.engine_repeats, split=name == "cpu"
                )
        per_core = {
            e: stats([x["rps"] / (x["load_cpu_pct"] / 100) for x in runs[f"hello-{e}"]])
            for e in ("wrk", "locust")
        }
        cpu = {e: stats([x["rps"] for x in runs[f"cpu-{e}"]]) for e in ("wrk", "locust")}
        agreement = ratio(_med(cpu["wrk"]), _med(cpu["locust"]))
        self.rows += [
            Row(
                "lab load engines, /hello: req/s per core of load-process CPU",
                fmt_stats(per_core["wrk"], "req/s·core") + " (wrk)",
                "locust, same run",
                fmt_stats(per_core["locust"], "req/s·core"),
                ratio(_med(per_core["wrk"]), _med(per_core["locust"])),
                TARGETS["engines"],
            ),
            Row(
                "lab load engines, /cpu?ms=2, 2 workers on one CPU, the load on the others "
                "(target-bound): req/s",
                fmt_stats(cpu["wrk"], "req/s") + " (wrk)",
                "locust, same run",
                fmt_stats(cpu["locust"], "req/s"),
                agreement,
                f"within {100 * ENGINE_AGREEMENT:.0f} %",
                met=None if agreement is None else abs(agreement - 1) <= ENGINE_AGREEMENT,
            ),
        ]

    # -- the lab --

    def lab_overhead(self) -> None:
        """``clusterlab run`` of a 2-point scenario, wall time ÷ the sum of its load durations."""
        s = self.settings
        runs: list[dict[str, Any]] = []
        self.raw["lab_overhead"] = {"scenario": str(SCENARIO.relative_to(peers.ROOT)), "runs": runs}
        for i in range(s.lab_runs):
            print(
                f"lab-overhead: clusterlab run {SCENARIO.relative_to(peers.ROOT)} "
                f"({i + 1}/{s.lab_runs})",
                flush=True,
            )
            if s.wait_quiet_s:
                report.wait_quiet([], s.quiet_pct, s.wait_quiet_s)
            runs.append(run_lab(SCENARIO))
        report_s = stats([r["phases"]["report"] for r in runs])
        unreported = stats([r["wall_s"] - r["phases"]["report"] for r in runs])
        load = stats([r["load_s"] for r in runs])
        ratios = stats([r["wall_s"] / r["load_s"] for r in runs])
        measured = stats([(r["wall_s"] - r["phases"]["report"]) / r["load_s"] for r in runs])
        windows = stats([r["wall_s"] / r["window_s"] for r in runs])
        first = runs[0]
        self.rows.append(
            Row(
                f"lab overhead: `clusterlab run`, {first['points']} points, wall time "
                "without the report",
                f"{fmt_stats(unreported, 's', 1)} (report {_fmt(_med(report_s))} s)",
                "sum of the points' load durations",
                f"{fmt_stats(load, 's', 1)} ({first['points']} × ({first['warmup_s']:g} + "
                f"{first['duration_s']:g}) s)",
                _med(measured),
                TARGETS["lab-overhead"],
                note=f"without the report; with it {_med(ratios):.2f}×, vs measured windows "
                f"only {_med(windows):.2f}×; {phase_line(runs)}",
            )
        )


def engine_figures(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Each measured engine point's (one per repeat) req/s and the load's CPU (% of one core)
    from its summary.json."""
    return [
        {
            "rps": float(point["rps"]),
            "load_cpu_pct": float(point["cpu_pct"]["generator"] or math.nan),
            "verdict": point.get("verdict"),
            "repeat": point.get("repeat"),
        }
        for point in summary["points"]
        if point.get("status") == "ok"
    ]


def _engine_run(
    name: str, path: str, engine: str, duration: float, repeats: int, split: bool
) -> list[dict[str, Any]]:
    cpus = len(os.sched_getaffinity(0))
    split_table = ENGINE_CPU_SPLIT.format(load=cpus - 1) if split and cpus >= 2 else ""
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
        scenario = Path(tmp) / f"{name}-{engine}.toml"
        text = ENGINE_SCENARIO.format(
            name=name,
            path=path,
            duration=duration,
            engine=engine,
            repeats=repeats,
            cpus=split_table,
        )
        scenario.write_text(text)
        out = Path(tmp) / "run"
        argv = [*_clusterlab_argv(), "run", str(scenario), "--out", str(out), "-q"]
        peers.run_in_session(argv, 60 + 20 * repeats, grace=3.0, stderr=subprocess.STDOUT)
        found = engine_figures(json.loads((out / "summary.json").read_text()))
    if not found:
        raise RuntimeError(f"engines: the {name} run with {engine} measured no point")
    return found


def _med(st: dict[str, Any] | None) -> float | None:
    return None if not st else st.get("median")


def _fmt(x: float | None, digits: int = 1) -> str:
    return "—" if x is None or math.isnan(x) else f"{x:,.{digits}f}"


class _ProcSampler:
    """Every ``period`` s: one process's CPU % of one core (since the last sample), its RSS (MiB),
    and its whole tree's CPU %, on a background thread."""

    def __init__(self, pid: int, period: float = 1.0) -> None:
        self.pid, self.period = pid, period
        self.samples: list[dict[str, float | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="primary-sampler", daemon=True)

    def __enter__(self) -> _ProcSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        t0 = time.monotonic()
        cost = report.ServerCost(self.pid)
        while not self._stop.wait(self.period):
            self.samples.append({"t": round(time.monotonic() - t0, 2), **cost.lap()})


def _clusterlab_argv() -> list[str]:
    script = Path(sys.executable).parent / "clusterlab"
    if script.exists():
        return [str(script)]
    found = shutil.which("clusterlab")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from clusterlab.cli import main; sys.exit(main())"]


def run_lab(scenario: Path, timeout: float = 300) -> dict[str, Any]:
    """Time ``clusterlab run SCENARIO -q`` from launch to exit (in its own session, stopped by
    pid on failure or Ctrl-C); read the points' load durations back from its summary.json."""
    with tempfile.TemporaryDirectory(prefix="bench-lab-") as tmp:
        out_dir = Path(tmp) / "run"
        argv = [*_clusterlab_argv(), "run", str(scenario), "--out", str(out_dir), "-q"]
        t0 = time.monotonic()
        peers.run_in_session(argv, timeout, grace=3.0, stderr=subprocess.STDOUT)
        wall = time.monotonic() - t0
        summary = json.loads((out_dir / "summary.json").read_text())
        phase_sums = lab_phases.totals(out_dir / "phases.csv")
    return {**lab_figures(summary, wall, argv), "phases": phase_sums}


def phase_line(runs: Sequence[dict[str, Any]]) -> str:
    """The median seconds per phase over the runs (those with time spent), the report apart,
    and what the phases leave unaccounted (the process's exit, after the phases were written)."""
    names = [n for n in lab_phases.PHASES if any(r["phases"].get(n, 0) >= 0.005 for r in runs)]
    med = {n: _med(stats([r["phases"].get(n, 0.0) for r in runs])) or 0.0 for n in names}
    rest = _med(stats([r["wall_s"] - sum(r["phases"].values()) for r in runs])) or 0.0
    parts = [f"{n} {med[n]:.2f}" for n in names if n != "report"]
    return f"per phase (s): {', '.join(parts)}; exit {rest:.2f}; report {med.get('report', 0):.2f}"


def lab_figures(summary: dict[str, Any], wall_s: float, argv: Sequence[str] = ()) -> dict[str, Any]:
    """Wall time vs the load the run's summary.json says it applied: per measured point, the
    scenario's warm-up + duration (``load_s``) and the measured windows (``window_s``)."""
    load = summary["scenario"]["load"]
    points = [p for p in summary["points"] if p.get("status") == "ok"]
    if not points:
        raise RuntimeError("the lab run measured no point")
    per_point = float(load.get("warmup") or 0) + float(load["duration"])
    run = summary.get("run", {})
    internal = (run["finished"] - run["started"]) if run.get("finished") else None
    return {
        "command": " ".join(argv),
        "wall_s": wall_s,
        "points": len(points),
        "failed_points": len(summary["points"]) - len(points),
        "warmup_s": float(load.get("warmup") or 0),
        "duration_s": float(load["duration"]),
        "load_s": per_point * len(points),
        "window_s": sum(float(p.get("window_s") or 0) for p in points),
        "run_started_to_finished_s": internal,
        "point_rows": [
            {
                k: p.get(k)
                for k in ("point", "workload", "policy", "workers", "rps", "window_s", "cpu_pct")
            }
            for p in points
        ],
    }


# --- command line ------------------------------------------------------------------------------


def _settings(a: argparse.Namespace) -> Settings:
    s = Settings()
    if a.quick:
        for k, v in QUICK.items():
            setattr(s, k, v)
    for key in (
        "rounds",
        "duration_s",
        "connections",
        "ipc_seconds",
        "micro_rounds",
        "forks",
        "primary_seconds",
        "paired_duration_s",
        "rr_base",
        "refactor_base",
        "lab_runs",
        "engine_repeats",
        "wait_quiet_s",
        "quiet_pct",
        "quiet_budget_s",
        "scaling_ms",
        "scaling_policy",
    ):
        value = getattr(a, key)
        if value is not None:
            setattr(s, key, value)
    if a.respawn_start_methods:
        s.respawn_start_methods = tuple(m for m in a.respawn_start_methods.split(",") if m)
    if a.keepalive_peers is not None:
        s.keepalive_peers = tuple(m for m in a.keepalive_peers.split(",") if m)
    s.scaling_workers = tuple(parse_workers(a.scaling_workers, available_parallelism()))
    if min(s.rounds, s.micro_rounds, s.lab_runs, s.engine_repeats) < 1 or s.primary_seconds < 3:
        raise ValueError("--primary-seconds must be ≥ 3 and every count of rounds/runs ≥ 1")
    return s


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m bench.suite",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:6]),
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="wrk runs of 1 s, 2 IPC/respawn rounds, a 20 s primary run",
    )
    ap.add_argument(
        "--only",
        help=f"comma list of {','.join(ROWS)} (handoff = rr,none,reuseport; all); "
        "default: all but reuseport",
    )
    ap.add_argument("--out", type=Path, default=report.RESULTS, help="results directory")
    _add_row_options(ap)
    _add_quiet_options(ap)
    ap.add_argument("--no-write", action="store_true")
    return ap


def _add_row_options(ap: argparse.ArgumentParser) -> None:
    """How long, how often and against what each row measures."""
    ap.add_argument("--rounds", type=int, help="wrk A/B rounds (3)")
    ap.add_argument("--duration", dest="duration_s", type=float, help="seconds per wrk run (2)")
    ap.add_argument("--connections", type=int, help="wrk connections (50)")
    ap.add_argument("--ipc-seconds", type=float, help="seconds per IPC phase (0.5)")
    ap.add_argument("--micro-rounds", type=int, help="alternating IPC and respawn rounds (3)")
    ap.add_argument("--forks", type=int, help="respawns per run, median of them (8)")
    ap.add_argument(
        "--respawn-start-methods",
        metavar="M[,M]",
        help=f"clusterlab start methods to time ({','.join(RESPAWN_START_METHODS)}; "
        "e.g. exec,forkserver)",
    )
    ap.add_argument(
        "--keepalive-peers",
        metavar="P[,P]",
        help="keep-alive peers (default uvicorn,node-rr: those with a target); also "
        "gunicorn-gthread, node-none, gunicorn-sync",
    )
    ap.add_argument(
        "--scaling-workers",
        metavar="N[,N]",
        help="worker counts for the CPU-bound row (1 and available_parallelism())",
    )
    ap.add_argument("--scaling-ms", type=float, help="CPU ms per request of /cpu (2)")
    ap.add_argument("--scaling-policy", choices=sorted(POLICY_NAMES), help="(rr)")
    ap.add_argument(
        "--primary-seconds", type=float, help="the primary's long run (300; --quick 20)"
    )
    ap.add_argument("--lab-runs", type=int, help="timed lab runs, median (1)")
    ap.add_argument("--engine-repeats", type=int, help="repeats per engine and workload (3)")
    ap.add_argument(
        "--paired-duration",
        dest="paired_duration_s",
        type=float,
        help="seconds per wrk run of the rows paired with rr (metrics on, the old tree, the "
        "policies), each between two rr samples (1; whole seconds)",
    )
    ap.add_argument(
        "--rr-base", metavar="REV", help="rr's baseline commit (default: the one before schedulers)"
    )
    ap.add_argument(
        "--refactor-base",
        metavar="REV",
        help="the hot-path rows' old tree (RR and NONE hand-off, IPC, respawn), run from a git "
        f"worktree in the same run ({refactor_base.REFACTOR_BASE} is the commit before issue "
        "15's refactor; default: left out)",
    )


def _add_quiet_options(ap: argparse.ArgumentParser) -> None:
    """Waiting for a quiet machine, retaking disturbed samples, and the budget for both."""
    report.add_quiet_options(ap, "retake disturbed samples (0: record only)", "wait_quiet_s")
    ap.add_argument(
        "--quiet-budget",
        dest="quiet_budget_s",
        type=float,
        metavar="S",
        help="seconds the whole run may spend waiting and retaking: bounds the "
        "run time on a busy machine; afterwards samples are kept as taken (10)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    ap = _parser()
    a = ap.parse_args(argv)
    try:
        selected = parse_only(a.only)
        settings = _settings(a)
    except ValueError as exc:
        ap.error(str(exc))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started, t0 = time.time(), time.monotonic()
    machine = report.machine_facts()
    suite = Suite(settings)
    steps = _steps(suite, selected)
    report.QUIET.budget_s = settings.quiet_budget_s
    try:
        status = _run_steps(suite, steps)
    finally:
        suite.close()
    wall = time.monotonic() - t0
    _print_outcome(suite, wall)
    if a.no_write:
        return status
    command = shlex.join(["python", "-m", "bench.suite", *(sys.argv[1:] if argv is None else argv)])
    run = {
        "started": started,
        "wall_s": wall,
        "complete": status == 0,
        "command": command,
        "selected": selected,
        "machine": machine,
    }
    _write_results(a.out, suite, run)
    return status


def _steps(suite: Suite, selected: Sequence[str]) -> list[tuple[str, Callable[[], None]]]:
    """The selected rows as named steps, in run order (the hand-off policies are one step)."""
    steps: list[tuple[str, Callable[[], None]]] = []
    # The schedulers join the hand-off rounds (one start, each between two samples of one rr).
    merged = "rr" in selected and "policies" in selected
    if policies := [p for p in ("rr", "none", "reuseport") if p in selected]:
        name = "handoff+policies" if merged else "handoff"
        steps.append((name, lambda: suite.handoff(policies, merged)))
    steps_in_order = (
        "policies",
        "keepalive",
        "scaling",
        "ipc",
        "respawn",
        "primary",
        "lab-overhead",
        "engines",
    )
    for name in steps_in_order:
        if name in selected and not (merged and name == "policies"):
            steps.append((name, getattr(suite, name.replace("-", "_"))))
    return steps


def _run_steps(suite: Suite, steps: Sequence[tuple[str, Callable[[], None]]]) -> int:
    """Run the steps in turn: a step that fails becomes a failed row and the run goes on; Ctrl-C
    or SIGTERM ends it with the rows measured so far. The exit status (0, 1, 130 or 143)."""
    status = 0
    for name, step in steps:
        spent_before = report.QUIET.left()
        first_row = len(suite.rows)
        t0 = time.monotonic()
        try:
            step()
            if suite.interrupted is not None:
                raise suite.interrupted
        except (KeyboardInterrupt, SystemExit) as exc:
            print("interrupted; every process started was stopped", file=sys.stderr)
            suite.note(f"{name}: interrupted; the run is partial")
            status = 143 if isinstance(exc, SystemExit) else 130
            break
        except (RuntimeError, ValueError, OSError, subprocess.SubprocessError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            print(f"error: {name}: {exc}", file=sys.stderr)
            suite.rows.append(Row(name, "failed", note=first[:120]))
            suite.raw.setdefault("errors", {})[name] = str(exc)
            status = 1
        finally:
            suite.row_seconds[name] = round(time.monotonic() - t0, 1)
            print(f"row {name}: {suite.row_seconds[name]:.0f} s", flush=True)
            _mark_disturbed(suite, name, first_row, spent_before)
    return status


def _mark_disturbed(suite: Suite, name: str, first_row: int, spent_before: float) -> None:
    """After step ``name``: note on its rows (from ``first_row``) how much of the CPUs others
    used when that passed the limit, and say so when the quiet budget ran out during it."""
    settings = suite.settings
    worst = max((_worst_foreign(suite.raw.get(k)) for k in STEP_RAW.get(name, ())), default=0.0)
    if worst > settings.quiet_pct:
        for row in suite.rows[first_row:]:
            busy = f"others used up to {worst:.0f}% of the CPUs"
            row.note = f"{row.note}; {busy}" if row.note else busy
    if settings.wait_quiet_s and spent_before > 0 and report.QUIET.left() <= 0:
        suite.note(
            f"the quiet-machine budget ({settings.quiet_budget_s:g} s) ran out "
            f"during {name}: later samples were kept as taken"
        )


def _print_outcome(suite: Suite, wall: float) -> None:
    """The table, the notes, a warning when other processes disturbed samples, the wall time."""
    print()
    print(render_text(suite.rows))
    for n in suite.notes:
        print(f"* {n}")
    worst = _worst_foreign(suite.raw)
    if worst > suite.settings.quiet_pct:
        warning = (
            f"other processes used up to {worst:.0f}% of the CPUs during some samples: "
            "figures are suspect (see --wait-quiet)"
        )
        suite.notes.append(warning)
        print(f"warning: {warning}")
    print(f"time per row: {time_line(suite.row_seconds, wall)}")
    print(f"suite: {wall:.0f} s")


def _write_results(out: Path, suite: Suite, run: dict[str, Any]) -> None:
    """``<out>/<UTC stamp>.json`` (``run``'s facts, settings, notes, table and raw results) and
    the same table as Markdown beside it (``.md``)."""
    name = report.stamp()
    data = {
        "benchmark": "suite",
        **run,
        "settings": asdict(suite.settings),
        "quiet_spent_s": round(report.QUIET.spent_s, 1),
        "row_seconds": suite.row_seconds,
        "notes": suite.notes,
        "table": [r.as_dict() for r in suite.rows],
        "raw": suite.raw,
    }
    json_path = report.write_text(
        out / f"{name}.json", json.dumps(data, indent=2, default=str) + "\n"
    )
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(run["started"]))
    md = render_markdown(
        suite.rows,
        run["machine"],
        suite.notes,
        run["command"],
        when,
        run["wall_s"],
        _display(json_path),
        suite.row_seconds,
    )
    md_path = report.write_text(out / f"{name}.md", md)
    print(f"wrote {_display(json_path)} and {_display(md_path)}")


def _display(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(peers.ROOT))
    return str(path)


# Where each step keeps its samples in Suite.raw (each sample records foreign_cpu_pct).
STEP_RAW = {
    "handoff": ("handoff",),
    "handoff+policies": ("handoff",),
    "policies": ("policies",),
    "keepalive": ("keepalive",),
    "scaling": ("scaling",),
    "ipc": ("ipc",),
    "respawn": ("respawn",),
    "primary": ("primary_ab", "primary"),
}


def _worst_foreign(raw: Any) -> float:
    worst = 0.0

    def walk(x: Any) -> None:
        nonlocal worst
        if isinstance(x, dict):
            if isinstance(x.get("foreign_cpu_pct"), int | float):
                worst = max(worst, float(x["foreign_cpu_pct"]))
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(raw)
    return worst


if __name__ == "__main__":
    sys.exit(main())
