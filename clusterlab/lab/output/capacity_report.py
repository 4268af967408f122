"""The report's capacity blocks, read from ``Analysis.capacity``: the recommendation (at the
top), the highest rate within the SLO per worker count and policy, the knees, Little's law
flags, efficiency and headroom; and for the Scalability section the USL fits with intervals and
predicted against measured."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

from clusterlab.lab.analysis.capacity import LITTLE_TOLERANCE
from clusterlab.lab.analysis.usl import TOO_FEW, Interval
from clusterlab.lab.output.text import fmt

if TYPE_CHECKING:
    from clusterlab.lab.analysis.analysis import Analysis
    from clusterlab.lab.output.sections import Block

#: Figures past this (N* with κ about 0: thousands of workers) print as ∞.
BEYOND = 1e4
SEARCH_HELP = (
    "Each probe is locust's open model at one rate, measured for at least the [search] "
    "min_requests; a ramp ×factor until a probe misses, then bisection until the bracket is "
    "within the precision, then the answer run again (confirmed). A rate is the system's answer "
    "only when the miss above it was target-bound; on 2 cores a /hello-like endpoint leaves the "
    "generator as the limit, so the bundled capacity scenario loads a CPU-bound endpoint."
)


def recommendation_blocks(analysis: Analysis, block: type[Block]) -> list[Block]:
    """The question and its answer, first thing in the report."""
    found = analysis.capacity
    if found is None or analysis.measured.empty or analysis.scenario.get("faults"):
        return []  # a run with faults asks about recovery, not capacity
    advice = found.recommendation
    return [block("h2", "Recommendation"), block("p", advice.answer, lead=advice.question)]


def capacity_blocks(analysis: Analysis, block: type[Block]) -> list[Block]:
    """The capacity section: SLO answers, knees, Little's law, efficiency."""
    found = analysis.capacity
    if found is None or analysis.measured.empty:
        return []
    out = [block("h2", "Capacity")]
    if found.slo is not None and not found.table.empty:
        out += [
            block("p", f"SLO: {found.slo.describe()}. {SEARCH_HELP}"),
            block("table", table=slo_table(found.table)),
            *_generator_note(analysis, block),
        ]
    if not found.knees.empty:
        out += [
            block("p", "Knees (Kneedle, p99 against the load level, 5+ levels):"),
            block("table", table=_knee_table(found.knees)),
        ]
    out += _little_blocks(analysis.points, block)
    if not found.efficiency.empty:
        out += [
            block(
                "p",
                "Efficiency: req/s per core the target used, and CPU headroom (the share of "
                "its CPUs it left unused), each worker count at its busiest load level.",
            ),
            block("table", table=_efficiency_table(found.efficiency)),
        ]
    return out


def _generator_note(analysis: Analysis, block: type[Block]) -> list[Block]:
    """Say so where the load generator, not the target, was the limit of some points."""
    measured = analysis.measured
    limited = measured[measured["verdict"] == "generator"] if not measured.empty else measured
    if limited.empty:
        return []
    listed = ", ".join(str(int(p) + 1) for p in limited["point"])
    return [
        block(
            "p",
            f"points {listed} were generator-bound: locust, not the target, was the limit "
            "(on 2 cores it is, against /hello-like endpoints), so a miss there is not the "
            "target's and the rate below it only a lower bound.",
            lead="The generator was the limit:",
        )
    ]


def slo_table(table: pd.DataFrame) -> pd.DataFrame:
    """Per workload × policy × workers: the highest rate within the SLO and its bracket."""
    rows = []
    for r in table.to_dict("records"):
        met = fmt(r["met"], 0)
        if r["repeats"] > 1:
            met += f" [{fmt(r['met_min'], 0)}–{fmt(r['met_max'], 0)}]"
        rows.append(
            {
                "workload": r["mix"],
                "policy": r["policy"],
                "workers": r["workers"],
                "max req/s within SLO": met,
                "lowest miss above": fmt(r["missed"], 0),
                "the target's limit": "yes" if r["systems"] else "no (lower bound)",
                "probes": r["probes"],
                "confirmed": {True: "yes", False: "no", None: "–"}[r["confirmed"]],
            }
        )
    return pd.DataFrame(rows)


def _knee_table(knees: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "workload": k["mix"],
                "policy": k["policy"],
                "workers": k["workers"],
                "at load level": fmt(k["knee_level"], 0),
                "req/s there": fmt(k["knee_rps"], 0),
                "p99 there ms": fmt(k["knee_p99_ms"], 2),
                "levels": k["levels"],
            }
            for k in knees.to_dict("records")
        ]
    )


def _interval(value: Interval | None, digits: int) -> str:
    if value is None:
        return "–"
    low, estimate, high = (_bounded(v, digits) for v in (value.low, value.estimate, value.high))
    return f"{estimate} [{low}–{high}]"


def _bounded(value: float, digits: int) -> str:
    """A figure, or ∞ past BEYOND (N* when κ is about 0: no peak in sight)."""
    return "∞" if value > BEYOND else fmt(value, digits)


def usl_blocks(analysis: Analysis, block: type[Block]) -> list[Block]:
    """The USL with the CPU cap and intervals, for the Scalability section (nothing when there
    are fewer than 3 worker counts: that section says so)."""
    found = analysis.capacity
    fits = [f for f in (found.usl if found else []) if f.refused != TOO_FEW]
    if not fits:
        return []
    rows: list[dict[str, Any]] = []
    predicted: list[dict[str, Any]] = []
    for f in fits:
        rows.append(
            {
                "workload": f.mix,
                "policy": f.policy,
                "verdict": f.verdict + (f": {f.refused}" if f.refused else ""),
                "σ": _interval(f.sigma, 3),
                "κ": _interval(f.kappa, 4),
                "λ req/s": _interval(f.lam, 0),
                "N*": _interval(f.peak_workers, 1),
                "X(N*) req/s": _interval(f.peak_rps, 0),
                "ceiling req/s": fmt(f.ceiling_rps, 0),
                "CPU-limited workers": ", ".join(map(str, f.cpu_limited)) or "–",
            }
        )
        for workers, measured, model in f.predicted:
            predicted.append(
                {
                    "workload": f.mix,
                    "policy": f.policy,
                    "workers": workers,
                    "measured req/s": fmt(measured, 0),
                    "predicted req/s": fmt(model, 0),
                    "error": f"{model / measured - 1:+.1%}" if measured else "–",
                }
            )
    text = (
        "USL with 95 % bootstrap intervals, fitted on target-bound points with the target's "
        "CPUs as a cap (past one worker per CPU the workers share cores: those counts are "
        "CPU-limited, and a flat line there is not coherency cost); refused when the intervals "
        "say nothing (N* uncertain by more than ±50 %)."
    )
    out = [block("p", text), block("table", table=pd.DataFrame(rows))]
    if predicted:
        out += [
            block("p", "Predicted against measured (median over repeats):"),
            block("table", table=pd.DataFrame(predicted)),
        ]
    return out


def _little_blocks(points: pd.DataFrame, block: type[Block]) -> list[Block]:
    if points.empty or "little_flag" not in points:
        return []
    flagged = points[points["little_flag"].fillna("") != ""]
    if flagged.empty:
        return [
            block(
                "p",
                f"Little's law holds within {LITTLE_TOLERANCE:.0%} at every point.",
                lead="Little's law:",
            )
        ]
    lines = "; ".join(
        f"point {int(p['point']) + 1} ({p['workload']} · {p['policy']} · {p['workers']} "
        f"workers): {p['little_flag']}"
        for p in flagged.to_dict("records")
    )
    return [
        block(
            "p",
            f"off by more than {LITTLE_TOLERANCE:.0%} (time lost somewhere): {lines}.",
            lead="Little's law:",
        )
    ]


def _efficiency_table(table: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "workload": e["mix"],
                "policy": e["policy"],
                "workers": e["workers"],
                "req/s": fmt(e["rps"], 0),
                "cores used": fmt(e["cores_used"], 2),
                "req/s per core": fmt(e["rps_per_core"], 0),
                "headroom %": fmt(100 * e["headroom"], 0),
            }
            for e in table.to_dict("records")
        ]
    )
