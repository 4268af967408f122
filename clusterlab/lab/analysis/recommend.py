"""The recommendation: a scenario's capacity question and its answer in a sentence or two, from
target-bound figures only, with the spread over repeats — what ``clusterlab run`` prints, the top
of the report, summary.json's ``capacity.recommendation`` and ``clusterlab plan``'s answer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from clusterlab.lab.config.slo import Slo


@dataclass(frozen=True)
class Recommendation:
    """``question`` and ``answer`` in words; ``workers``/``policy`` the configuration that
    answers the rate asked for (None: none measured does, or no rate was asked); ``best_*``
    the most sustained within the SLO (or the most req/s without one)."""

    question: str
    answer: str
    workers: int | None = None
    policy: str | None = None
    best_rps: float | None = None
    best_workers: int | None = None
    best_policy: str | None = None
    lower_bound: bool = False

    def text(self) -> str:
        return f"{self.question} {self.answer}"

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "text": self.text()}


def _n(value: float) -> str:
    return f"{value:,.0f}"


def _spread(row: dict[str, Any], key: str = "met") -> str:
    low, high = row[f"{key}_min"], row[f"{key}_max"]
    if math.isnan(low) or math.isclose(low, high):
        return ""
    return f" ({_n(low)}–{_n(high)} over repeats)"


def recommend_slo(table: pd.DataFrame, slo: Slo, rate: float | None, cpus: int) -> Recommendation:
    """From the capacity table (``capacity.capacity_table``): the fewest workers whose every
    repeat met the SLO at ``rate``, and the most any configuration sustained within it."""
    bounds = slo.describe()
    question = (
        f"How many workers for {_n(rate)} req/s at {bounds}?"
        if rate is not None
        else f"What is the most this machine sustains at {bounds}?"
    )
    found = table[table["met"].notna()].to_dict("records") if not table.empty else []
    if not found:
        return Recommendation(question, "No measured configuration met the SLO.")
    best = max(found, key=lambda r: r["met"])
    sentences = []
    chosen: dict[str, Any] | None = None
    if rate is not None:
        serving = [r for r in found if r["met_min"] >= rate]
        if serving:
            chosen = min(serving, key=lambda r: (r["workers"], -r["met"]))
            sentences.append(
                f"For {_n(rate)} req/s at {bounds}: {chosen['workers']} workers "
                f"({chosen['policy']}), which sustained {_n(chosen['met'])} req/s"
                f"{_spread(chosen)}."
            )
        else:
            sentences.append(f"No measured configuration sustained {_n(rate)} req/s at {bounds}.")
    most = (
        f"The most this machine sustains within the SLO is {_n(best['met'])} req/s"
        f"{_spread(best)} ({best['workers']} workers, {best['policy']})"
    )
    if not best["systems"]:
        most += ": a lower bound (no target-bound miss above it)"
    elif not math.isnan(best["missed"]):
        most += f"; {_n(best['missed'])} req/s missed"
    sentences.append(most + ".")
    same = [r for r in found if (r["mix"], r["policy"]) == (best["mix"], best["policy"])]
    trend = _past_cpus(same, "met", cpus)
    if trend:
        sentences.append(trend)
    return Recommendation(
        question,
        " ".join(sentences),
        chosen["workers"] if chosen else None,
        chosen["policy"] if chosen else None,
        float(best["met"]),
        int(best["workers"]),
        str(best["policy"]),
        not best["systems"],
    )


def recommend_throughput(aggregates: pd.DataFrame, cpus: int) -> Recommendation:
    """Without an SLO: the worker count and policy with the most req/s among target-bound
    groups, and what more workers did past one per CPU."""
    question = "How many workers give the most req/s?"
    bound = (
        aggregates[aggregates["target_bound"]].to_dict("records")
        if not aggregates.empty
        else []
    )
    if not bound:
        return Recommendation(
            question, "No group was target-bound: this run does not measure the target's capacity."
        )
    best = max(bound, key=lambda r: r["rps"])
    answer = (
        f"{best['workers']} workers ({best['policy']}, {best['workload']}): "
        f"{_n(best['rps'])} req/s{_spread(best, 'rps')}."
    )
    same = [r for r in bound if (r["workload"], r["policy"]) == (best["workload"], best["policy"])]
    trend = _past_cpus(same, "rps", cpus)
    return Recommendation(
        question,
        answer + (f" {trend}" if trend else ""),
        int(best["workers"]),
        str(best["policy"]),
        float(best["rps"]),
        int(best["workers"]),
        str(best["policy"]),
    )


def _past_cpus(rows: list[dict[str, Any]], key: str, cpus: int) -> str:
    """What the most workers measured past one per CPU did against the best at or under it:
    falls or rises when the ranges over repeats do not overlap, else no gain."""
    within = [r for r in rows if 0 < r["workers"] <= cpus]
    beyond = [r for r in rows if r["workers"] > cpus]
    if not within or not beyond:
        return ""
    base = max(within, key=lambda r: r[key])
    last = max(beyond, key=lambda r: r["workers"])
    low, high = f"{key}_min", f"{key}_max"
    change = (
        f"({_n(base[key])} req/s at {base['workers']} → {_n(last[key])} at {last['workers']})"
    )
    if min(base["repeats"], last["repeats"]) < 2:
        moved = "fell" if last[key] < base[key] else "rose"
        return f"Past one worker per CPU, throughput {moved} {change} in one repeat: not tested."
    if last[high] < base[low]:
        return f"Past one worker per CPU, throughput falls {change}."
    if last[low] > base[high]:
        return f"Past one worker per CPU, throughput still rises {change}."
    return f"Past one worker per CPU, no gain within the spread {change}."
