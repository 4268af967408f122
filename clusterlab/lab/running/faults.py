"""Fault injection, the runner's side: turn a scenario's ``[[faults]]`` streams into one point's
schedule, and send each fault to the target's primary at its time.

The schedule is fixed before the point starts (seeded, so a scenario always injects the same
faults); the primary picks the worker and acts (signals, or a fault armed in the worker).
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from clusterlab.lab.config.scenario import Fault
from clusterlab.lab.protocol import Command, FaultCommand, LoadFile
from clusterlab.lab.running.targets import TargetError


@dataclass(frozen=True)
class PlannedFault:
    """One fault of a point: when (seconds into the measured window), what, and at whom.

    ``draw`` is a uniform number in [0, 1) that picks the worker when ``target`` is random.
    """

    id: int
    stream: int
    offset: float
    fault: Fault
    draw: float

    def command(self) -> FaultCommand:
        """The control command the target's primary carries out."""
        fault = self.fault
        return {
            "cmd": Command.FAULT,
            "id": self.id,
            "stream": self.stream,
            "kind": fault.kind,
            "target": fault.target,
            "draw": self.draw,
            "code": fault.code,
            "hang": fault.hang,
            "fatal": fault.fatal,
            "factor": fault.factor if fault.kind == "slow" else None,
            "length": fault.length if fault.kind == "slow" else None,
        }


def fault_times(fault: Fault, duration: float, rng: random.Random) -> list[float]:
    """Offsets into the measured window, in [start, stop): every ``every`` seconds from
    ``start`` (default one interval in), or Poisson arrivals at ``rate`` per second from
    ``start`` (default 0; exponential gaps drawn from ``rng``)."""
    stop = duration if fault.stop is None else fault.stop
    times: list[float] = []
    if fault.every is not None:
        first = fault.every if fault.start is None else fault.start
        k = 0
        while (t := first + k * fault.every) < stop:
            times.append(t)
            k += 1
        return times
    assert fault.rate is not None
    t = fault.start or 0.0
    while (t := t + rng.expovariate(fault.rate)) < stop:
        times.append(t)
    return times


def schedule(
    faults: tuple[Fault, ...], duration: float, repeat: int, workload: str | None = None
) -> list[PlannedFault]:
    """Every fault of one point in time order (of ``workload``: only the streams that apply to
    it). The draws depend on each stream's seed and on the repeat only, so all policies and
    workloads of a repeat get the same faults at the same times (a fair comparison) while
    repeats differ."""
    planned: list[tuple[float, int, Fault, float]] = []
    for stream, fault in enumerate(faults):
        if workload is not None and fault.workloads and workload not in fault.workloads:
            continue
        times = fault_times(fault, duration, random.Random(f"{fault.seed}:{stream}:{repeat}:t"))
        targets = random.Random(f"{fault.seed}:{stream}:{repeat}:w")
        planned += [(t, stream, fault, targets.random()) for t in times]
    planned.sort(key=lambda p: (p[0], p[1]))
    return [PlannedFault(i, s, round(t, 6), f, d) for i, (t, s, f, d) in enumerate(planned)]


class FaultInjector:
    """A thread that waits for locust's measured window to start, then sends each planned fault
    at its time. When ``send`` raises ``TargetError`` (the target is gone), that fault and the
    rest are reported to ``skipped`` with the reason, never raised into the run."""

    def __init__(
        self,
        plan: list[PlannedFault],
        send: Callable[[FaultCommand], None],
        load_dir: Path,
        skipped: Callable[[PlannedFault, str], None],
    ) -> None:
        self._plan = plan
        self._send = send
        self._marker = load_dir / LoadFile.MEASURING
        self._skipped = skipped
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lab-faults", daemon=True)

    def __enter__(self) -> FaultInjector:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        if not self._plan:
            return
        origin = self._wait_for_window()
        for i, planned in enumerate(self._plan):
            if origin is None or self._stop.wait(max(0.0, origin + planned.offset - time.time())):
                self._skip(self._plan[i:], "the load ended before this fault was due")
                return
            try:
                self._send(planned.command())
            except TargetError as exc:
                self._skip(self._plan[i:], f"the target did not take it: {exc}")
                return

    def _wait_for_window(self) -> float | None:
        while not self._stop.is_set():
            try:
                return float(json.loads(self._marker.read_text())["measure_start"])
            except (OSError, ValueError, KeyError):
                self._stop.wait(0.02)
        return None

    def _skip(self, rest: list[PlannedFault], reason: str) -> None:
        for planned in rest:
            self._skipped(planned, reason)
