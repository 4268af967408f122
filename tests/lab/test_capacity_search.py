"""The SLO search (running/search.py) against simulated targets with a known knee: it brackets
the highest rate meeting the SLO within the precision, confirms it, keeps to its probe budget,
and the analysis reads the same answer back from the probes' rows."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from clusterlab.lab.analysis.capacity import capacities, capacity_table, probe_met
from clusterlab.lab.config.slo import Search, parse_slo
from clusterlab.lab.running.search import BISECT, CONFIRM, RAMP, Probe, search

pytestmark = pytest.mark.parallel_ok  # starts no load: runs beside the cluster tests


def queue(capacity: float, service_ms: float, slo_ms: float):
    """A target whose p99 is an M/M/1 queue's, service / (1 − ρ) × ln 100: it meets ``slo_ms``
    up to a known rate (the knee), and past ``capacity`` never."""

    def p99(rate: float) -> float:
        rho = rate / capacity
        return math.inf if rho >= 1 else service_ms / (1 - rho) * math.log(100)

    knee = capacity * (1 - service_ms * math.log(100) / slo_ms)
    taken: list[float] = []

    def probe(rate: float, step: str) -> Probe:
        taken.append(rate)
        return Probe(rate, step, p99(rate) <= slo_ms, "target")

    return probe, knee, taken, p99


@pytest.mark.parametrize(
    ("capacity", "start"), [(1000.0, 50.0), (1000.0, 5000.0), (37_000.0, 50.0), (180.0, 100.0)]
)
def test_the_search_brackets_the_knee_within_the_precision(capacity, start):
    probe, knee, taken, _ = queue(capacity, service_ms=1.0, slo_ms=50.0)
    result = search(probe, Search(start=start, precision=0.05, max_probes=30))
    assert result.met is not None and result.missed is not None
    assert result.met <= knee < result.missed
    assert result.bracket <= 0.05
    assert result.confirmed is True
    assert [p.step for p in result.probes][-1] == CONFIRM
    assert result.probes[-1].rate == result.met
    assert len(taken) == len(result.probes) <= 30


def test_the_ramp_is_geometric_then_bisection_halves_the_bracket():
    probe, _, taken, _ = queue(1000.0, service_ms=1.0, slo_ms=50.0)
    result = search(probe, Search(start=50.0, factor=2.0, precision=0.05, max_probes=30))
    ramp = [p.rate for p in result.probes if p.step == RAMP]
    assert ramp == [50.0 * 2**i for i in range(len(ramp))]
    bisect = [p for p in result.probes if p.step == BISECT]
    low, high = ramp[-2], ramp[-1]
    for p in bisect:
        assert p.rate == pytest.approx((low + high) / 2)
        low, high = (p.rate, high) if p.met else (low, p.rate)


def test_the_probe_budget_is_kept_and_the_confirmation_is_within_it():
    probe, knee, taken, _ = queue(1000.0, service_ms=1.0, slo_ms=50.0)
    result = search(probe, Search(start=50.0, precision=0.001, max_probes=6))
    assert len(taken) == 6
    assert result.probes[-1].step == CONFIRM
    assert result.met is not None and result.met <= knee
    assert result.bracket > 0.001  # the budget ran out first


def test_nothing_met_nothing_confirmed():
    probe, _, _, _ = queue(1.0, service_ms=1.0, slo_ms=50.0)  # knee below 1 req/s
    result = search(probe, Search(start=50.0, max_probes=5))
    assert result.met is None and result.confirmed is None
    # down the ramp (50, 25, 12.5, 6.25), the last probe kept for a confirmation never needed
    assert [p.rate for p in result.probes] == [50.0, 25.0, 12.5, 6.25]


def test_an_answer_whose_confirmation_misses_is_a_miss_and_the_search_goes_below_it():
    confirms: list[float] = []

    def flaky(rate: float, step: str) -> Probe:
        if step == CONFIRM:
            confirms.append(rate)
            # the first answer misses when run again; the ones after it hold
            return Probe(rate, step, len(confirms) > 1 and rate <= 400, "target")
        return Probe(rate, step, rate <= 400, "target")

    result = search(flaky, Search(start=100.0, precision=0.05, max_probes=30))
    assert len(confirms) == 2 and confirms[1] < confirms[0]
    assert result.confirmed is True
    assert result.met == confirms[1] and result.missed is not None
    assert result.met < result.missed <= confirms[0]


def test_confirmations_that_always_miss_end_unconfirmed_within_the_budget():
    def never_twice(rate: float, step: str) -> Probe:
        return Probe(rate, step, rate <= 400 and step != CONFIRM, "target")

    result = search(never_twice, Search(start=100.0, precision=0.05, max_probes=12))
    assert len(result.probes) <= 12
    assert result.confirmed is False
    confirmed_rates = {p.rate for p in result.probes if p.step == CONFIRM}
    assert result.met is None or result.met not in confirmed_rates


def _rows(result, workers: int, verdict_above: str = "target") -> list[dict]:
    """The probes as results.csv-like rows (p99 meets 50 ms exactly when the probe met)."""
    return [
        {
            "point": i,
            "repeat": 0,
            "mix": "cpu",
            "policy": "rr",
            "workers": workers,
            "status": "ok",
            "offered_rps": p.rate,
            "rps": p.rate,
            "p99_ms": 10.0 if p.met else 500.0,
            "failure_ratio": 0.0,
            "search_step": p.step,
            "verdict": "target" if p.met else verdict_above,
        }
        for i, p in enumerate(result.probes)
    ]


def test_the_analysis_reads_the_searchs_answer_from_its_probes():
    slo = parse_slo({"p99_ms": 50})
    rows = []
    for workers, capacity in ((1, 500.0), (2, 950.0)):
        probe, knee, _, _ = queue(capacity, service_ms=1.0, slo_ms=50.0)
        result = search(probe, Search(start=50.0, max_probes=20))
        rows += _rows(result, workers)
    table = capacity_table(capacities(pd.DataFrame(rows), slo)).set_index("workers")
    for workers, capacity in ((1, 500.0), (2, 950.0)):
        _, knee, _, _ = queue(capacity, service_ms=1.0, slo_ms=50.0)
        assert table.loc[workers, "met"] <= knee < table.loc[workers, "missed"]
        assert table.loc[workers, "systems"]
        assert table.loc[workers, "confirmed"]


def test_a_miss_that_is_not_target_bound_is_never_the_systems_answer():
    slo = parse_slo({"p99_ms": 50})
    probe, _, _, _ = queue(1000.0, service_ms=1.0, slo_ms=50.0)
    rows = _rows(search(probe, Search(start=50.0, max_probes=20)), 1, verdict_above="generator")
    table = capacity_table(capacities(pd.DataFrame(rows), slo))
    assert not table.loc[0, "systems"]


def test_a_probe_that_fell_behind_its_rate_meets_nothing():
    slo = parse_slo({"p99_ms": 50})
    row = {"status": "ok", "p99_ms": 5.0, "failure_ratio": 0.0, "offered_rps": 1000.0}
    assert probe_met({**row, "rps": 995.0}, slo)
    assert not probe_met({**row, "rps": 700.0}, slo)
    assert not probe_met(
        {**row, "rps": 995.0, "failure_ratio": 0.5},
        parse_slo({"p99_ms": 50, "failure_ratio": "< 0.1%"}),
    )


def test_the_analysis_counts_a_rate_met_only_if_it_met_every_time_it_ran():
    slo = parse_slo({"p99_ms": 50})
    probes = [
        Probe(100.0, RAMP, True),
        Probe(200.0, RAMP, True),
        Probe(400.0, RAMP, False),
        Probe(200.0, CONFIRM, False),
    ]
    result = type("R", (), {"probes": probes})()
    table = capacity_table(capacities(pd.DataFrame(_rows(result, 1)), slo))
    assert (table.loc[0, "met"], table.loc[0, "missed"]) == (100.0, 200.0)
    assert table.loc[0, "confirmed"] is None
