"""Gates: k6-style pass/fail thresholds written in a scenario's ``[gates]`` table and checked at
the end of ``clusterlab run``.

```toml
[gates]
p99_ms = "< 50"                       # every workload × policy × workers: median p99 under 50 ms
failure_ratio = "< 0.1%"
"fairness.jain" = ["> 0.95"]          # a list holds several conditions on one metric
"rps{workload=cpu,workers=2}" = "> 400"   # {…} narrows the points, like k6 tags
```

A gate is checked on the median over the repeats of each matching workload × policy × workers
group, and passes only when every group passes; a gate that matches no measured point fails (a
mistyped filter must not pass silently). The metric names are shared with ``compare``.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

GROUP_KEYS = ("workload", "policy", "workers")

# metric name → (path into a summary.json point, unit kind, +1 higher is better / -1 lower is)
METRICS: dict[str, tuple[tuple[str, ...], str, int]] = {
    "rps": (("rps",), "rate", +1),
    "p50_ms": (("p50_ms",), "ms", -1),
    "p90_ms": (("p90_ms",), "ms", -1),
    "p99_ms": (("p99_ms",), "ms", -1),
    "p999_ms": (("p999_ms",), "ms", -1),
    "max_ms": (("max_ms",), "ms", -1),
    "failure_ratio": (("failure_ratio",), "ratio", -1),
    "fail_rps": (("fail_rps",), "rate", -1),
    "fairness.jain": (("fairness", "requests", "jain"), "ratio", +1),
    "fairness.cv": (("fairness", "requests", "cv"), "ratio", -1),
    "fairness.max_mean": (("fairness", "requests", "max_mean"), "ratio", -1),
    "fairness.connections.jain": (("fairness", "connections", "jain"), "ratio", +1),
    "cpu.workers": (("cpu_pct", "workers"), "pct", -1),
    "cpu.primary": (("cpu_pct", "primary"), "pct", -1),
}
ALIASES = {
    "p50": "p50_ms",
    "p90": "p90_ms",
    "p99": "p99_ms",
    "p999": "p999_ms",
    "max": "max_ms",
    "jain": "fairness.jain",
    "fairness": "fairness.jain",
}
OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}
_KEY = re.compile(r"^\s*([A-Za-z0-9_.]+)\s*(?:\{([^}]*)\})?\s*$")
_CONDITION = re.compile(
    r"^\s*(<=|>=|==|!=|<|>)\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|s|%)?\s*$"
)


@dataclass(frozen=True)
class Gate:
    """One condition: ``metric op limit`` over the points matching ``where``."""

    text: str
    metric: str
    op: str
    limit: float
    where: tuple[tuple[str, str], ...] = ()

    def matches(self, group: dict[str, Any]) -> bool:
        return all(str(group[k]) == v for k, v in self.where)


def canonical_metric(name: str) -> str | None:
    """The metric's canonical name, or None when it is not known."""
    name = ALIASES.get(name, name)
    return name if name in METRICS else None


def parse_gates(table: dict[str, Any]) -> tuple[Gate, ...]:
    """The ``[gates]`` table as Gates; raise ValueError('gates.KEY: expected …, got …')."""
    gates = []
    for key, conditions in table.items():
        where = f"gates.{key}" if re.fullmatch(r"[A-Za-z0-9_]+", key) else f'gates."{key}"'
        found = _KEY.match(key)
        metric = canonical_metric(found.group(1)) if found else None
        if not found or metric is None:
            known = ", ".join([*METRICS, *ALIASES])
            raise ValueError(
                f"{where}: expected a metric ({known}) with an optional "
                f"{{workload=…,policy=…,workers=…}} filter, got {key!r}"
            )
        filters = _parse_filter(found.group(2) or "", where)
        items = [conditions] if isinstance(conditions, str) else conditions
        if not isinstance(items, list) or not items or not all(isinstance(c, str) for c in items):
            raise ValueError(
                f'{where}: expected a condition like "< 50" or a list of them, got {conditions!r}'
            )
        for text in items:
            gates.append(_parse_condition(text, metric, filters, key, where))
    return tuple(gates)


def _parse_filter(text: str, where: str) -> tuple[tuple[str, str], ...]:
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        if name.strip() not in GROUP_KEYS or not value.strip():
            raise ValueError(
                f"{where}: expected filters like workload=NAME, policy=rr or "
                f"workers=2, got {part!r}"
            )
        out.append((name.strip(), value.strip()))
    return tuple(out)


def _parse_condition(
    text: str, metric: str, filters: tuple[tuple[str, str], ...], key: str, where: str
) -> Gate:
    found = _CONDITION.match(text)
    if not found:
        raise ValueError(
            f'{where}: expected a condition like "< 50", ">= 0.95" or "< 0.1%", got {text!r}'
        )
    op, number, unit = found.groups()
    limit = float(number)
    kind = METRICS[metric][1]
    if unit == "%":
        limit = limit / 100 if kind == "ratio" else limit
    elif unit in ("ms", "s"):
        if kind != "ms":
            raise ValueError(f"{where}: expected no time unit on {metric}, got {text!r}")
        limit = limit * 1000 if unit == "s" else limit
    return Gate(text=f"{key} {text.strip()}", metric=metric, op=op, limit=limit, where=filters)
