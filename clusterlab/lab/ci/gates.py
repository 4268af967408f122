"""Checking a run's ``[gates]`` (parsed by ``config.gates``) on its summary: each gate on the
median over repeats of every matching workload × policy × workers group. Also the two readers of
summary points that gates, ``compare`` and the pytest plugin share."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from clusterlab.lab.config.gates import GROUP_KEYS, METRICS, OPS, Gate


@dataclass(frozen=True)
class GateResult:
    gate: Gate
    group: dict[str, Any] | None
    value: float | None
    passed: bool
    message: str

    @property
    def name(self) -> str:
        """``workload/policy/workers`` of the group checked."""
        if self.group is None:
            return "(no matching points)"
        return "/".join(str(self.group[k]) for k in GROUP_KEYS)


def point_value(point: dict[str, Any], metric: str) -> float:
    """A metric of one summary.json point (NaN when missing)."""
    value: Any = point
    for part in METRICS[metric][0]:
        value = value.get(part) if isinstance(value, dict) else None
    return (
        float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
    )


def groups(points: Iterable[dict[str, Any]]) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    """Measured (status ok) points by workload × policy × workers, in first-seen order."""
    out: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for point in points:
        if point.get("status") == "ok":
            out.setdefault(tuple(point[k] for k in GROUP_KEYS), []).append(point)
    return out


def check_gates(gates: Iterable[Gate], summary: dict[str, Any]) -> list[GateResult]:
    """Every gate against every matching group of a run's summary.json."""
    grouped = groups(summary.get("points", []))
    results = []
    for gate in gates:
        matched = False
        for key, members in grouped.items():
            group = dict(zip(GROUP_KEYS, key, strict=True))
            if not gate.matches(group):
                continue
            matched = True
            values = [v for v in (point_value(p, gate.metric) for p in members) if math.isfinite(v)]
            if not values:
                results.append(GateResult(gate, group, None, False, "no value measured"))
                continue
            value = statistics.median(values)
            passed = OPS[gate.op](value, gate.limit)
            verb = "ok" if passed else "FAILED"
            results.append(
                GateResult(
                    gate,
                    group,
                    value,
                    passed,
                    f"{verb}: median {value:.6g} over {len(values)} repeats",
                )
            )
        if not matched:
            results.append(GateResult(gate, None, None, False, "no measured point matches"))
    return results
