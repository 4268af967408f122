"""Search mode: the highest rate that meets the SLO, per worker count and policy (Nighthawk's
adaptive load, scored by the scenario's ``[slo]``).

Open-model probes climb a geometric ramp (``start`` × ``factor``…) until one misses, then
bisection halves the bracket until it is within ``precision`` (or ``max_probes`` are spent), and
the highest rate that met the SLO is run once more to confirm it (if it misses, it counts as a
miss: bisection goes on below it and the new answer is confirmed in turn, within the budget). ``search`` is the pure
algorithm; ``SearchRun`` runs its probes against one started target. Each probe is a row of
results.csv (``offered_rps``, ``search_step``); the analysis reads the answer from them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from clusterlab.lab.analysis.capacity import probe_met
from clusterlab.lab.analysis.verdicts import point_verdict
from clusterlab.lab.config.plan import Point, open_users
from clusterlab.lab.config.slo import Search
from clusterlab.lab.running.runner import _GroupRun
from clusterlab.lab.running.targets import TargetHandle

RAMP, BISECT, CONFIRM = "ramp", "bisect", "confirm"


@dataclass(frozen=True)
class Probe:
    """One probe's rate, the search's step that chose it, whether it met the SLO and what
    limited it (the point's verdict)."""

    rate: float
    step: str
    met: bool
    verdict: str = ""


@dataclass(frozen=True)
class SearchResult:
    """``met``: the highest rate that met the SLO (None: none did); ``missed``: the lowest
    rate above it that missed (None: none did); ``confirmed``: the confirmation run met it
    (None: not run)."""

    probes: tuple[Probe, ...]
    met: float | None
    missed: float | None
    confirmed: bool | None

    @property
    def bracket(self) -> float:
        """(missed − met) / met; inf while either end is unknown."""
        if self.met is None or self.missed is None:
            return math.inf
        return (self.missed - self.met) / self.met


def search(probe: Callable[[float, str], Probe], settings: Search) -> SearchResult:
    """Ramp, bisect, confirm; ``probe(rate, step)`` measures one rate."""
    taken: list[Probe] = []
    budget = settings.max_probes - (1 if settings.confirm else 0)

    def take(rate: float, step: str) -> Probe:
        found = probe(rate, step)
        taken.append(found)
        return found

    met, missed = _ramp(take, settings, budget, taken)
    confirmed: bool | None = None
    while met is not None:
        met, missed = _bisect(take, settings, budget, taken, met, missed)
        if not settings.confirm or len(taken) >= settings.max_probes:
            break
        confirmed = take(met, CONFIRM).met
        if confirmed:
            break
        # the answer missed when run again: it is a miss, the answer lies below it
        missed = met
        met = max((p.rate for p in taken if p.rate < missed and _held(p.rate, taken)), default=None)
    return SearchResult(tuple(taken), met, missed, confirmed)


def _held(rate: float, taken: list[Probe]) -> bool:
    """Every probe at ``rate`` met the SLO."""
    return all(p.met for p in taken if p.rate == rate)


def _bisect(
    take: Callable[[float, str], Probe],
    settings: Search,
    budget: int,
    taken: list[Probe],
    met: float,
    missed: float | None,
) -> tuple[float, float | None]:
    """Halve the bracket (met, missed) until it is within ``precision`` or the budget is spent."""
    while missed is not None and len(taken) < budget:
        if (missed - met) / met <= settings.precision:
            break
        middle = (met + missed) / 2
        if take(middle, BISECT).met:
            met = middle
        else:
            missed = middle
    return met, missed


def _ramp(
    take: Callable[[float, str], Probe], settings: Search, budget: int, taken: list[Probe]
) -> tuple[float | None, float | None]:
    """Up by ``factor`` from ``start`` while probes meet the SLO; down by it while they miss
    (the start was too high). Returns the bracket (met, missed) found."""
    met: float | None = None
    missed: float | None = None
    rate = settings.start
    while len(taken) < budget:
        if take(rate, RAMP).met:
            met = rate
            if missed is not None:
                break
            rate *= settings.factor
        else:
            missed = rate
            if met is not None:
                break
            rate /= settings.factor
    return met, missed


@dataclass
class SearchRun(_GroupRun):
    """One target's search: the planned point is a template (worker count, policy, workload);
    every probe is a new point numbered from ``indexes``, added to ``group`` as it runs."""

    indexes: Iterator[int] = field(repr=False)

    def __post_init__(self) -> None:
        # numbered like the probes (a failed start records the template under this number)
        self.group[0] = replace(self.group[0], index=next(self.indexes))

    def _measure_points(
        self, target: TargetHandle, first: Point, results: list[dict[str, Any]]
    ) -> None:
        template = self.group[0]
        self.group.clear()
        settings = self.scenario.search or Search()

        def probe(rate: float, step: str) -> Probe:
            point = self._probe_point(template, rate, step)
            self.group.append(point)
            # the first probe's line was shown as the target started
            row = self._point(point, target, point if len(self.group) == 1 else first)
            results.append(row)
            return self._score(row)

        search(probe, settings)

    def _probe_point(self, template: Point, rate: float, step: str) -> Point:
        """A probe at ``rate``: enough users for the rate at the SLO's latency, measured long
        enough for ``min_requests`` requests."""
        load, settings = self.scenario.load, self.scenario.search or Search()
        latency = self.scenario.slo.latency_ms if self.scenario.slo else None
        return replace(
            template,
            index=template.index if not self.group else next(self.indexes),
            users=open_users(rate, latency, load.users),
            rate=rate,
            duration=max(load.duration, math.ceil(settings.min_requests / rate)),
            step=step,
        )

    def _score(self, row: dict[str, Any]) -> Probe:
        """Whether a probe's row met the SLO, and its verdict (as the analysis will find it)."""
        workers = [
            w["cpu_pct"]
            for w in self.tables.rows["workers"]
            if w["point"] == row["point"] and w.get("cpu_pct") is not None
        ]
        row = {**row, "busiest_worker_cpu_pct": max(workers, default=math.nan)}
        verdict, _ = point_verdict(
            row, self.scenario.load.generator_bound_cpu, int(row.get("cpus") or 1)
        )
        slo = self.scenario.slo
        met = slo is not None and probe_met(row, slo)
        return Probe(
            float(row["offered_rps"]), str(row.get("search_step")), met, str(verdict or "")
        )
