"""What the primary counts about its workers for its metrics endpoint: forks, exits, channel
frames, and the supervisors that run on it. Plain integers, bumped on the primary's loop."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass
class Counts:
    """Totals since the primary started (exits by exit code and signal name, "" for neither)."""

    forks: int = 0
    exits: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: Frames on the workers' channels: read from them, written to them.
    frames_received: int = 0
    frames_sent: int = 0
    #: `Supervisor.stats` of every supervisor started in this primary (read, never written).
    supervisors: list[Mapping[str, int]] = field(default_factory=list)

    def exited(self, code: int | None, signal: str | None) -> None:
        self.exits["" if code is None else str(code), signal or ""] += 1


#: The primary's counts (one primary per process).
COUNTS = Counts()


def watch_supervisor(stats: Mapping[str, int]) -> None:
    """A `Supervisor` started: its restarts, refusals and hangs are exported from `stats`."""
    COUNTS.supervisors.append(stats)
