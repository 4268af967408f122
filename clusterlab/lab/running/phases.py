"""Where a run's wall time goes: each phase's start and end on the monotonic clock (shared by
every process on Linux, so locust's own marks line up), per point, written to ``phases.csv``.

Phases: ``start-up`` (the process's creation to the first phase), ``target start``, ``counts``
(the workers' counts asked for before the load), ``locust start``, ``warm-up``, ``window``,
``drain`` (the load's end to its processes reaped), ``collect`` (reading what the load wrote,
the counts after), ``target stop``, ``report``; the gaps between them are ``other``.
"""

from __future__ import annotations

import contextlib
import csv
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

PHASES = (
    "start-up",
    "target start",
    "counts",
    "locust start",
    "warm-up",
    "window",
    "drain",
    "collect",
    "target stop",
    "report",
    "other",
)
COLUMNS = ["phase", "point", "start_s", "end_s", "seconds"]


def process_started() -> float:
    """This process's creation on the monotonic clock (from /proc, to a clock tick; now where
    /proc cannot say)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return time.monotonic()
    return time.monotonic() - max(0.0, age)


@dataclass(frozen=True)
class Phase:
    name: str
    #: The point's number (0-based) for a point's phases; None for the run's and a target's.
    point: int | None
    start: float
    end: float


@dataclass
class PhaseLog:
    """The phases of one run, in the order they ended; times on the monotonic clock."""

    origin: float = field(default_factory=process_started)
    phases: list[Phase] = field(default_factory=list)

    def add(self, name: str, start: float, end: float, point: int | None = None) -> None:
        self.phases.append(Phase(name, point, start, max(start, end)))

    @contextlib.contextmanager
    def timed(self, name: str, point: int | None = None) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self.add(name, start, time.monotonic(), point)

    def timeline(self) -> list[Phase]:
        """Start-up, the phases by start, and ``other`` for each gap between them, so that the
        durations add up to the last phase's end less the process's start."""
        ordered = sorted(self.phases, key=lambda p: (p.start, p.end))
        first = ordered[0].start if ordered else time.monotonic()
        line = [Phase("start-up", None, self.origin, first)]
        reached = first
        for phase in ordered:
            if phase.start > reached:
                line.append(Phase("other", phase.point, reached, phase.start))
            start = max(phase.start, reached)  # overlapping phases count once
            line.append(Phase(phase.name, phase.point, start, max(start, phase.end)))
            reached = max(reached, phase.end)
        return line

    def write(self, path: Path) -> None:
        """``phases.csv``: one row per phase, seconds since the process started."""
        with path.open("w", newline="") as f:
            out = csv.writer(f)
            out.writerow(COLUMNS)
            for p in self.timeline():
                point = "" if p.point is None else p.point
                start, end = p.start - self.origin, p.end - self.origin
                out.writerow([p.name, point, f"{start:.4f}", f"{end:.4f}", f"{end - start:.4f}"])


_current: list[PhaseLog] = []


def begin() -> PhaseLog:
    """A new log for the run this process starts now; the running code records into it."""
    _current[:] = [PhaseLog()]
    return _current[0]


def timed(name: str, point: int | None = None) -> contextlib.AbstractContextManager[None]:
    """Time a phase into the current run's log (nothing without one: a target or load started
    outside a run)."""
    return _current[0].timed(name, point) if _current else contextlib.nullcontext()


def add(name: str, start: float, end: float, point: int | None = None) -> None:
    if _current:
        _current[0].add(name, start, end, point)


def totals(path: Path) -> dict[str, float]:
    """The seconds per phase of a run's ``phases.csv``, in ``PHASES`` order."""
    sums = dict.fromkeys(PHASES, 0.0)
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            sums[row["phase"]] = sums.get(row["phase"], 0.0) + float(row["seconds"])
    return sums
