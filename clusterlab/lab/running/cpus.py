"""Which CPUs the load and the target may use: separate sets (pinned with ``sched_setaffinity``
through ``taskset``) or the same ones, decided once per run from the CPUs this process may use.

Separate sets keep the load generator from taking CPU time the target needed, so the target's
throughput is its own; on a machine with few CPUs splitting leaves each side too little, so by
default the lab splits only from 4 usable CPUs, giving the load a quarter (rounded up).
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from clusterlab.lab.config.scenario import Cpus

#: From this many usable CPUs, "auto" splits.
AUTO_SPLIT_FROM = 4


class CpuSplitError(ValueError):
    """A split that this machine cannot give; the message is one line for the user."""


@dataclass(frozen=True)
class CpuPlan:
    """The CPU sets of one run. ``shared``: load and target use the same CPUs (``load`` and
    ``target`` are then both every usable CPU)."""

    load: tuple[int, ...]
    target: tuple[int, ...]
    shared: bool

    @property
    def target_parallelism(self) -> int:
        """``available_parallelism()`` as the target sees it: its own CPUs."""
        return len(self.target)

    def describe(self) -> str:
        if self.shared:
            return f"load and target share the {len(self.target)} CPUs {_ranges(self.target)}"
        return f"load on CPUs {_ranges(self.load)}, target on CPUs {_ranges(self.target)}"

    def to_dict(self) -> dict[str, object]:
        return {"load": list(self.load), "target": list(self.target), "shared": self.shared}


def usable_cpus() -> tuple[int, ...]:
    """The CPUs this process may run on (its affinity mask)."""
    return tuple(sorted(os.sched_getaffinity(0)))


def plan_cpus(options: Cpus, available: Sequence[int]) -> CpuPlan:
    """Split ``available`` CPUs as ``options`` asks: the load takes the highest-numbered ones."""
    cpus = tuple(sorted(available))
    split = options.split == "on" or (options.split == "auto" and len(cpus) >= AUTO_SPLIT_FROM)
    if not split:
        return CpuPlan(cpus, cpus, shared=True)
    load = options.load if options.load is not None else math.ceil(len(cpus) / 4)
    if len(cpus) < 2 or not 1 <= load < len(cpus):
        raise CpuSplitError(
            f"cpus.load: expected from 1 to {len(cpus) - 1} CPUs of the {len(cpus)} this process "
            f"may use ({_ranges(cpus)}), leaving the target at least one, got {load}"
        )
    return CpuPlan(cpus[-load:], cpus[:-load], shared=False)


def pinned(command: list[str], cpus: Iterable[int] | None) -> list[str]:
    """``command`` run on ``cpus`` only (``taskset -c``; inherited by everything it starts), or
    unchanged when ``cpus`` is None."""
    if cpus is None:
        return command
    taskset = shutil.which("taskset")
    if taskset is None:
        raise CpuSplitError("taskset (util-linux) is needed to pin load and target to CPUs")
    return [taskset, "-c", ",".join(str(c) for c in cpus), *command]


def _ranges(cpus: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` as "0-2,5"."""
    parts: list[str] = []
    for cpu in sorted(cpus):
        if parts and parts[-1].split("-")[-1] == str(cpu - 1):
            parts[-1] = f"{parts[-1].split('-')[0]}-{cpu}"
        else:
            parts.append(str(cpu))
    return ",".join(parts)
