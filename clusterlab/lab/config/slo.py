"""The ``[slo]`` and ``[search]`` tables: the objective a point must meet, and how the search
for the highest rate that meets it probes.

```toml
[slo]
p99_ms = 50                 # a number is an upper bound ("<= 50")
failure_ratio = "< 0.1%"    # or a condition, as in [gates]
rate = 1200                 # optional: the rate the recommendation plans for

[search]                    # search mode (needs [slo]); every key optional
start = 50
```
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from clusterlab.lab.config.gates import METRICS, Gate, parse_gates

#: The metrics an SLO may bound (all lower-is-better).
SLO_METRICS = ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms", "failure_ratio")
_UPPER = {"<": operator.lt, "<=": operator.le}


@dataclass(frozen=True)
class Slo:
    """Upper bounds on a point's figures, each a ``Gate`` (metric, op, limit); ``rate``: the
    rate the recommendation plans for (None: only the most the machine sustains)."""

    bounds: tuple[Gate, ...]
    rate: float | None = None

    def met(self, figures: Mapping[str, Any]) -> bool:
        """Every bound holds on a point's figures (a missing figure meets nothing)."""
        for bound in self.bounds:
            value = figures.get(bound.metric)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                return False
            if not _UPPER[bound.op](float(value), bound.limit):
                return False
        return True

    def misses(self, figures: Mapping[str, Any]) -> list[str]:
        """The bounds a point's figures miss, as their text (e.g. ``p99_ms <= 50``)."""
        return [b.text for b in self.bounds if not Slo((b,)).met(figures)]

    @property
    def latency_ms(self) -> float | None:
        """The loosest latency bound (ms), which sizes the open model's users; None if none."""
        limits = [b.limit for b in self.bounds if METRICS[b.metric][1] == "ms"]
        return max(limits) if limits else None

    def describe(self) -> str:
        """The bounds in words: ``p99 ≤ 50 ms, failure ratio < 0.1%``."""
        return ", ".join(_describe(b) for b in self.bounds)


@dataclass(frozen=True)
class Search:
    """Search mode's settings (the ``[search]`` table)."""

    start: float = 50.0
    factor: float = 2.0
    precision: float = 0.05
    max_probes: int = 14
    min_requests: int = 1000
    confirm: bool = True


def parse_slo(table: dict[str, Any]) -> Slo:
    """The ``[slo]`` table (already checked by the schema) as an Slo; raise ValueError
    ('slo.KEY: expected …, got …') on a bound that is not an upper bound."""
    conditions = {}
    for key, value in table.items():
        if key == "rate":
            continue
        text = f"<= {value:g}" if isinstance(value, int | float) else str(value)
        conditions[key] = text
    if not conditions:
        raise ValueError("slo: expected at least one bound (e.g. p99_ms = 50), got only a rate")
    try:
        bounds = parse_gates(conditions)
    except ValueError as exc:
        raise ValueError(str(exc).replace("gates.", "slo.", 1)) from None
    for bound in bounds:
        if bound.op not in _UPPER:
            raise ValueError(
                f'slo.{bound.metric}: expected an upper bound ("< x" or "<= x"), '
                f"got {conditions[bound.metric]!r}"
            )
    rate = table.get("rate")
    return Slo(bounds, float(rate) if rate is not None else None)


def _describe(bound: Gate) -> str:
    sign = "≤" if bound.op == "<=" else "<"
    if bound.metric == "failure_ratio":
        return f"failure ratio {sign} {bound.limit:.2%}".replace(".00%", "%")
    name = bound.metric.removesuffix("_ms").replace("p999", "p99.9")
    return f"{name} {sign} {bound.limit:g} ms"
