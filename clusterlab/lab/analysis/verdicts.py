"""What limited a point, read from the CPU each side used in its measured window — the verdict
every figure the lab prints carries:

* ``target``: the target ran out of CPU: its processes used nearly all the CPU they may use
  (``TARGET_SATURATED_PCT`` of min(its CPUs, its workers) cores), or its busiest worker used
  nearly a whole core (a worker serves on one core: the policy piled work on it), or — where
  load and target share the CPUs — the CPUs were full (``MACHINE_FULL_PCT``) while the load
  used only a small part of them (``LOAD_SMALL_PCT``) and nothing outside the run used more
  than ``OUTSIDE_PCT`` of a core. Only these points measure the target.
* ``generator``: a load process was near its core (``load.generator_bound_cpu``; each load
  process runs on one core): the number is the load generator's limit.
* ``machine``: the CPUs were full with neither of those: load, target (and anything else) took
  CPU from each other, so the number is neither side's capacity.
* ``unsaturated``: nothing ran out of CPU: latency and the number of clients set the rate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

#: The target counts as saturated from this share of the CPU it may use.
TARGET_SATURATED_PCT = 90.0
#: The machine's CPUs count as full from this busy share (% of all CPUs).
MACHINE_FULL_PCT = 85.0
#: Where load and target share CPUs: a load using at most this share of all CPUs is "small".
LOAD_SMALL_PCT = 15.0
#: Processes outside the run using more than this (% of one core) make full CPUs their doing
#: as much as the target's (the same level the report calls noisy).
OUTSIDE_PCT = 25.0


class Verdict(StrEnum):
    TARGET = "target"
    GENERATOR = "generator"
    MACHINE = "machine"
    UNSATURATED = "unsaturated"


@dataclass(frozen=True)
class Usage:
    """What a point's measured window used. CPU in % of one core, except ``machine`` (% of all
    ``cpus``). ``target_capacity``: % of one core the target may use (100 × min(its CPUs, its
    workers)); ``shared``: load and target ran on the same CPUs."""

    target: float
    target_capacity: float
    worker_max: float
    load_max: float
    load_total: float
    machine: float
    cpus: int
    shared: bool
    outside: float = 0.0


def judge(usage: Usage, generator_limit: float) -> tuple[Verdict, str]:
    """The verdict and one sentence saying why, with the figures behind it."""
    u = usage
    cores = u.target_capacity / 100
    target_share = 100 * u.target / u.target_capacity if u.target_capacity > 0 else math.nan
    load_share = u.load_total / u.cpus if u.cpus else math.nan
    if target_share >= TARGET_SATURATED_PCT:
        return Verdict.TARGET, (
            f"the target used {u.target:.0f}% of a core, {target_share:.0f}% of the "
            f"{cores:g} cores it may use"
        )
    if u.worker_max >= TARGET_SATURATED_PCT:
        return Verdict.TARGET, (
            f"its busiest worker used {u.worker_max:.0f}% of a core (the whole target "
            f"{_pct(target_share)} of the {cores:g} cores it may use): that worker was the limit"
        )
    if u.load_max >= generator_limit:
        return Verdict.GENERATOR, (
            f"a load process used {u.load_max:.0f}% of a core (limit {generator_limit:g}%)"
        )
    quiet = _zero(u.outside) <= OUTSIDE_PCT
    if u.shared and u.machine >= MACHINE_FULL_PCT and _zero(load_share) <= LOAD_SMALL_PCT and quiet:
        return Verdict.TARGET, (
            f"CPUs {u.machine:.0f}% busy while the load used {_zero(load_share):.0f}% of them"
        )
    if u.machine >= MACHINE_FULL_PCT:
        return Verdict.MACHINE, (
            f"CPUs {u.machine:.0f}% busy but neither side at its limit (target "
            f"{_pct(target_share)} of its {cores:g} cores, busiest load process "
            f"{_pct(u.load_max)} of a core, load {_pct(load_share)} of the CPUs, outside the "
            f"run {_pct(u.outside)} of a core): they took CPU from each other"
        )
    return Verdict.UNSATURATED, (
        f"nothing ran out of CPU (target {_pct(target_share)} of its {cores:g} cores, busiest "
        f"load process {_pct(u.load_max)} of a core, CPUs {_pct(u.machine)} busy): latency and "
        "the number of clients set the rate"
    )


def point_usage(row: Mapping[str, Any], default_cpus: int) -> Usage:
    """A results.csv row's usage. Runs recorded before CPU placement was recorded ran load and
    target on every CPU of the machine (``default_cpus``)."""
    cpus = int(_or(row.get("cpus"), default_cpus))
    target_cpus = _or(row.get("target_cpus"), cpus)
    workers = _number(row.get("workers"))
    capacity_cores = min(target_cpus, workers) if workers and workers > 0 else target_cpus
    shared = row.get("cpu_shared")
    return Usage(
        target=_number(row.get("workers_cpu_pct")) + _zero(_number(row.get("primary_cpu_pct"))),
        target_capacity=100.0 * capacity_cores,
        worker_max=_number(row.get("busiest_worker_cpu_pct")),
        load_max=_number(row.get("gen_cpu_max_pct")),
        load_total=_number(row.get("gen_cpu_pct")),
        machine=_number(row.get("machine_cpu_pct")),
        cpus=cpus,
        shared=True if _missing(shared) else bool(shared),
        outside=_number(row.get("other_cpu_pct")),
    )


def point_verdict(
    row: Mapping[str, Any], generator_limit: float, default_cpus: int
) -> tuple[Verdict | None, str]:
    """The verdict of one results.csv row; (None, "") for a point that did not finish."""
    if row.get("status") != "ok":
        return None, ""
    return judge(point_usage(row, default_cpus), generator_limit)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _number(value: Any) -> float:
    return math.nan if _missing(value) else float(value)


def _or(value: Any, default: float) -> float:
    return float(default) if _missing(value) else float(value)


def _zero(value: float) -> float:
    return 0.0 if math.isnan(value) else value


def _pct(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.0f}%"
