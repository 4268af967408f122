"""Run ``wrk`` and parse its output; interleave measurements over rounds (A/B) for medians and spread.

``run_wrk(url, close=True)`` adds ``-H 'Connection: close'`` so every request opens a new
connection (the hand-off benchmark); the default is keep-alive. Errors are wrk's
"Non-2xx or 3xx responses" and "Socket errors: connect, read, write, timeout". Each run also
records the CPU seconds wrk itself used (``cpu_s``), so a benchmark can say how much of the
machine the generator took.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import statistics
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


@dataclass(frozen=True)
class WrkResult:
    """One wrk run: throughput, totals, errors and mean latency."""

    requests_per_s: float
    requests: int
    duration_s: float
    latency_avg_ms: float
    non_2xx: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)
    command: str = ""
    cpu_s: float = 0.0

    @property
    def cpu_pct(self) -> float:
        """wrk's own CPU over the run, in % of one core."""
        return 100 * self.cpu_s / self.duration_s if self.duration_s else float("nan")

    @property
    def errors(self) -> int:
        return self.non_2xx + sum(self.socket_errors.values())

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "errors": self.errors, "cpu_pct": self.cpu_pct}


def parse_wrk(text: str, command: str = "") -> WrkResult:
    """Parse wrk's default report (no Lua script)."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    total = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h)", text)
    if not rps or not total:
        raise ValueError(f"cannot parse wrk output:\n{text}")
    lat = re.search(r"Latency\s+([\d.]+)(us|ms|s|m|h)", text)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    names = ("connect", "read", "write", "timeout")
    return WrkResult(
        requests_per_s=float(rps.group(1)),
        requests=int(total.group(1)),
        duration_s=float(total.group(2)) * _UNITS[total.group(3)] / 1e3,
        latency_avg_ms=float(lat.group(1)) * _UNITS[lat.group(2)] if lat else float("nan"),
        non_2xx=int(non2xx.group(1)) if non2xx else 0,
        socket_errors=dict(zip(names, map(int, sock.groups()), strict=True)) if sock else {},
        command=command,
    )


def wrk_argv(
    url: str, threads: int = 1, connections: int = 50, duration_s: float = 5, close: bool = False
) -> list[str]:
    """The wrk command line (``-H 'Connection: close'`` when ``close``)."""
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s:g}s"]
    return argv + (["-H", "Connection: close"] if close else []) + [url]


def _children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_wrk(
    url: str,
    threads: int = 1,
    connections: int = 50,
    duration_s: float = 5,
    close: bool = False,
    env: Mapping[str, str] | None = None,
) -> WrkResult:
    """Run wrk once (bounded: killed ``duration_s + 15`` s after start) and parse it.

    wrk's CPU time is the growth of this process's reaped-children rusage over the run: exact
    for wrk as long as no other child of ours is reaped meanwhile (the benchmarks run one thing
    at a time; servers are reaped only when stopped), and unlike polling wrk's pid it includes
    wrk's last moments. ``env``: added to wrk's environment (bench/sources.py's preload)."""
    if not shutil.which("wrk"):
        raise RuntimeError("wrk not on PATH (apt-get install -y wrk)")
    argv = wrk_argv(url, threads, connections, duration_s, close)
    cpu0 = _children_cpu_s()
    out = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=duration_s + 15,
        check=True,
        env={**os.environ, **env} if env else None,
    )
    cpu_s = _children_cpu_s() - cpu0
    cmd = " ".join(f"'{a}'" if " " in a else a for a in argv)
    return replace(parse_wrk(out.stdout, cmd), cpu_s=round(cpu_s, 3))


@dataclass(frozen=True)
class Stats:
    """Samples of one measured quantity with median and spread ((max - min) / median)."""

    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def spread_pct(self) -> float:
        m = self.median
        return 100 * (max(self.samples) - min(self.samples)) / m if m else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {
            "median": self.median,
            "min": min(self.samples),
            "max": max(self.samples),
            "spread_pct": self.spread_pct,
            "samples": self.samples,
        }


def interleaved_rounds(fns: Mapping[str, Callable[[], float]], rounds: int) -> dict[str, Stats]:
    """Call every fn once per round, rotating the order each round so drift hits all alike."""
    names = list(fns)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            out[name].append(fns[name]())
    return {n: Stats(v) for n, v in out.items()}


#: In :func:`anchored_order`, a warm-up run (not measured) of the server named after it.
WARM = "warm:"


def anchored_order(anchor: str, others: Sequence[str], rounds: int) -> list[str]:
    """The runs of :func:`anchored_rounds`: a block per other server, each a warm-up of it
    (``WARM + name``, not measured) and then ``rounds`` samples of it, each between two anchor
    samples (A X A X A X A; a block's last anchor sample is the next block's first)."""
    order = [anchor]
    for other in others:
        order.insert(len(order) - 1, WARM + other)  # warmed up while the anchor runs next
        order += [name for _ in range(rounds) for name in (other, anchor)]
    return order


def paired_ratios(
    order: Sequence[str], values: Sequence[float], anchor: str
) -> dict[str, list[float]]:
    """Each measured other sample over the mean of the anchor samples just before and after it
    (``values``: one per measured run of ``order``, warm-ups left out)."""
    measured = [name for name in order if not name.startswith(WARM)]
    out: dict[str, list[float]] = {}
    for i, name in enumerate(measured):
        if name == anchor:
            continue
        around = (values[i - 1] + values[i + 1]) / 2
        out.setdefault(name, []).append(values[i] / around if around else float("nan"))
    return out


def anchored_rounds(
    fns: Mapping[str, Callable[[], float]],
    anchor: str,
    rounds: int,
    warm: Callable[[str], None] = lambda name: None,
) -> tuple[dict[str, Stats], dict[str, Stats]]:
    """Measure each other server in a block of its own between samples of ``anchor``
    (:func:`anchored_order`; ``warm(name)`` runs the warm-up). Returns the samples of each (the
    anchor's: all of them) and each other's paired ratios, one per round
    (:func:`paired_ratios`): judged against the anchor of the same moments, each server warm
    (a server idle for a while answers slower at first: Node.js's cluster by 30-50 % in its
    first second), not against a median taken while the machine was elsewhere."""
    order = anchored_order(anchor, [n for n in fns if n != anchor], rounds)
    out: dict[str, list[float]] = {n: [] for n in fns}
    values = []
    for name in order:
        if name.startswith(WARM):
            warm(name.removeprefix(WARM))
            continue
        values.append(fns[name]())
        out[name].append(values[-1])
    paired = paired_ratios(order, values, anchor)
    return {n: Stats(v) for n, v in out.items()}, {n: Stats(v) for n, v in paired.items()}


@dataclass(frozen=True)
class ABResult:
    """A/B medians, spreads and the ratio of medians ``b / a``."""

    a: Stats
    b: Stats

    @property
    def ratio(self) -> float:
        return self.b.median / self.a.median if self.a.median else float("nan")


def ab_rounds(a: Callable[[], float], b: Callable[[], float], rounds: int) -> ABResult:
    """Alternate A and B (AB, BA, AB, ...) for ``rounds`` rounds; medians and spread of each."""
    st = interleaved_rounds({"a": a, "b": b}, rounds)
    return ABResult(st["a"], st["b"])
