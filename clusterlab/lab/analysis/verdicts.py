"""What limited a point: read from the CPU each side used in its measured window.

Today one question: was the load generator, not the cluster, the limit? (A point that was is
the generator's number, not the cluster's capacity.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

#: The machine's CPUs count as saturated from this busy share (% of all CPUs).
SATURATED_PCT = 80.0


def generator_bound(
    gen_max: float,
    gen_total: float,
    cluster: float,
    machine_pct: float,
    limit: float,
    saturated: float = SATURATED_PCT,
) -> tuple[bool, str]:
    """Was the load generator, not the cluster, the limit? Yes when one locust process is at
    ``limit`` % of a core (locust runs on one core per process), or when the machine's CPUs are
    ``saturated`` % busy and locust used at least as much CPU as the cluster (then the cluster
    got only what locust left over). CPU figures are % of one core; ``machine_pct`` of all CPUs."""
    if gen_max >= limit:
        return True, f"a locust process used {gen_max:.0f}% of a core (limit {limit:g}%)"
    if machine_pct >= saturated and gen_total >= cluster:
        return True, (
            f"CPUs {machine_pct:.0f}% busy and locust used {gen_total:.0f}% of a core, "
            f"the cluster {cluster:.0f}%"
        )
    return False, ""


def point_generator_bound(row: Mapping[str, Any], limit: float) -> tuple[bool, str]:
    """``generator_bound`` of one results.csv row (a failed point never is)."""
    if row.get("status") != "ok":
        return False, ""
    return generator_bound(
        _number(row.get("gen_cpu_max_pct")),
        _number(row.get("gen_cpu_pct")),
        _number(row.get("workers_cpu_pct")) + _zero(row.get("primary_cpu_pct")),
        _number(row.get("machine_cpu_pct")),
        limit,
    )


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def _zero(value: Any) -> float:
    number = _number(value)
    return 0.0 if math.isnan(number) else number
