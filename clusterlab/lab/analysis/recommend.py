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
    workload: str | None = None

    def text(self) -> str:
        return f"{self.question} {self.answer}"

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "text": self.text()}


def _n(value: float) -> str:
    return f"{value:,.0f}"


def _workers(count: int) -> str:
    return f"{count} worker" if count == 1 else f"{count} workers"


def _spread(row: dict[str, Any], key: str = "met") -> str:
    low, high = row[f"{key}_min"], row[f"{key}_max"]
    if math.isnan(low) or math.isclose(low, high):
        return ""
    return f" ({_n(low)}–{_n(high)} over repeats)"


def recommend_slo(table: pd.DataFrame, slo: Slo, rate: float | None, cpus: int) -> Recommendation:
    """From the capacity table (``capacity.capacity_table``), per workload: the fewest workers
    whose every repeat met the SLO at ``rate``, and the most any configuration sustained within
    it; with several workloads each answer is led by its name."""
    bounds = slo.describe()
    question = (
        f"How many workers for {_n(rate)} req/s at {bounds}?"
        if rate is not None
        else f"What is the most this machine sustains at {bounds}?"
    )
    found = table[table["met"].notna()] if not table.empty else table
    if found.empty:
        return Recommendation(question, "No measured configuration met the SLO.")
    answers = [
        _slo_answer(group.to_dict("records"), bounds, rate, cpus)
        for _, group in found.groupby("mix", sort=True)
    ]
    several = len(answers) > 1
    text = " ".join(
        f"{best['mix']}: {sentence}" if several else sentence for sentence, _, best in answers
    )
    answered = [a for a in answers if a[1] is not None]
    _, chosen, best = answered[0] if answered else answers[0]
    return Recommendation(
        question,
        text,
        chosen["workers"] if chosen else None,
        chosen["policy"] if chosen else None,
        float(best["met"]),
        int(best["workers"]),
        str(best["policy"]),
        not best["systems"],
        workload=str(best["mix"]),
    )


def _slo_answer(
    found: list[dict[str, Any]], bounds: str, rate: float | None, cpus: int
) -> tuple[str, dict[str, Any] | None, dict[str, Any]]:
    """One workload's answer: (sentences, the configuration serving ``rate``, the best). Only
    a configuration whose confirmation (if any) met the SLO serves ``rate``."""
    # a rate whose confirmation missed is the edge: an answer that held twice comes first
    best = max(found, key=lambda r: (r.get("confirmed") is not False, r["met"]))
    sentences = []
    chosen: dict[str, Any] | None = None
    if rate is not None:
        serving = [r for r in found if r["met_min"] >= rate and r.get("confirmed") is not False]
        if serving:
            chosen = min(serving, key=lambda r: (r["workers"], -r["met"]))
            sentences.append(
                f"For {_n(rate)} req/s at {bounds}: {_workers(chosen['workers'])} "
                f"({chosen['policy']}), which sustained {_n(chosen['met'])} req/s"
                f"{_spread(chosen)}."
            )
        else:
            sentences.append(f"No measured configuration sustained {_n(rate)} req/s at {bounds}.")
    most = (
        f"The most this machine sustains within the SLO is {_n(best['met'])} req/s"
        f"{_spread(best)} ({_workers(best['workers'])}, {best['policy']})"
    )
    if not best["systems"]:
        most += ": a lower bound (no target-bound miss above it)"
    elif not math.isnan(best["missed"]):
        most += f"; {_n(best['missed'])} req/s missed"
    if best.get("confirmed") is False:
        most += "; run again, it missed the SLO: this is the edge, with no margin"
    sentences.append(most + ".")
    same = [r for r in found if r["policy"] == best["policy"]]
    trend = _past_cpus(same, "met", cpus)
    return " ".join([*sentences, trend] if trend else sentences), chosen, best


def recommend_throughput(aggregates: pd.DataFrame, cpus: int) -> Recommendation:
    """Without an SLO, per workload: the worker count and policy with the most req/s among
    target-bound groups, and what more workers did past one per CPU."""
    question = "How many workers give the most req/s?"
    bound = aggregates[aggregates["target_bound"]] if not aggregates.empty else aggregates
    if bound.empty:
        return Recommendation(
            question, "No group was target-bound: this run does not measure the target's capacity."
        )
    sentences = []
    bests = []
    for workload, group in bound.groupby("workload", sort=True):
        rows = group.to_dict("records")
        best = max(rows, key=lambda r: r["rps"])
        bests.append(best)
        sentence = (
            f"{workload}: {_workers(best['workers'])} ({best['policy']}), "
            f"{_n(best['rps'])} req/s{_spread(best, 'rps')}."
        )
        trend = _past_cpus([r for r in rows if r["policy"] == best["policy"]], "rps", cpus)
        sentences.append(sentence + (f" {trend}" if trend else ""))
    first = bests[0]
    return Recommendation(
        question,
        " ".join(sentences),
        int(first["workers"]),
        str(first["policy"]),
        float(first["rps"]),
        int(first["workers"]),
        str(first["policy"]),
        workload=str(first["workload"]),
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
    change = f"({_n(base[key])} req/s at {base['workers']} → {_n(last[key])} at {last['workers']})"
    if min(base["repeats"], last["repeats"]) < 2:
        moved = "fell" if last[key] < base[key] else "rose" if last[key] > base[key] else "held"
        return f"Past one worker per CPU, throughput {moved} {change} in one repeat: not tested."
    if last[high] < base[low]:
        return f"Past one worker per CPU, throughput falls {change}."
    if last[low] > base[high]:
        return f"Past one worker per CPU, throughput still rises {change}."
    return f"Past one worker per CPU, no gain within the spread {change}."
