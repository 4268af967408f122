"""What a run prints while it works: point k of n, elapsed, ETA, and one line per finished point.
On a terminal the current point is shown on one updating line; otherwise (CI logs) lines only."""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from clusterlab.lab.analysis.verdicts import point_verdict
from clusterlab.lab.config.plan import Point


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}:{seconds % 60:02d}"


class ConsoleProgress:
    """Progress for ``clusterlab run``; ``quiet`` prints nothing."""

    def __init__(
        self,
        stream: TextIO | None = None,
        quiet: bool = False,
        generator_bound_cpu: float = 85.0,
    ) -> None:
        self.stream = sys.stderr if stream is None else stream  # the one current when made
        self.quiet = quiet
        self.generator_bound_cpu = generator_bound_cpu
        self.tty = self.stream.isatty()
        self.t0 = time.monotonic()
        self.estimate = math.nan
        self.finished = 0

    def _write(self, text: str, transient: bool = False) -> None:
        if self.quiet:
            return
        if self.tty:
            self.stream.write("\r\x1b[2K" + text + ("" if transient else "\n"))
        elif not transient:
            self.stream.write(text + "\n")
        self.stream.flush()

    def started(self, total: int, estimate_s: float, out_dir: Path) -> None:
        self.t0 = time.monotonic()
        self.estimate = estimate_s
        self._write(f"{total} points, about {_clock(estimate_s)}; writing {out_dir}")

    def _eta(self, total: int) -> float:
        elapsed = time.monotonic() - self.t0
        if self.finished:
            return elapsed / self.finished * (total - self.finished)
        return self.estimate - elapsed

    def point_started(self, point: Point, total: int) -> None:
        elapsed = time.monotonic() - self.t0
        self._write(
            f"point {point.index + 1}/{total} {point.label()}  "
            f"elapsed {_clock(elapsed)} ETA {_clock(self._eta(total))}",
            transient=True,
        )

    def point_finished(self, point: Point, total: int, row: dict[str, Any]) -> None:
        self.finished += 1
        elapsed = time.monotonic() - self.t0
        if row.get("status") == "ok":
            result = f"{row['rps']:.0f} req/s, p99 {row['p99_ms']:.1f} ms"
            verdict, _ = point_verdict(row, self.generator_bound_cpu, os.cpu_count() or 1)
            if verdict is not None:
                result += f" [{verdict}-bound]" if verdict != "unsaturated" else " [unsaturated]"
            if row.get("load_lost"):  # a load worker vanished mid-window: the point is marked
                result += f"; LOAD WORKER LOST: {row['load_lost']}"
        else:
            result = f"FAILED: {row.get('error')}"
        self._write(
            f"point {point.index + 1}/{total} {point.label()}: {result}  "
            f"elapsed {_clock(elapsed)} ETA {_clock(self._eta(total))}"
        )
