"""``clusterlab plan RUN --rate 1200 --p99 50ms``: how many workers for R req/s at this SLO,
answered from an existing run's tables (a load sweep's levels or a search's probes); without
bounds, the run's own ``[slo]``. Exit 0 answered, 1 no measured configuration serves it, 2 bad
input (one line naming the option)."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

EXIT_OK, EXIT_NONE, EXIT_BAD_INPUT = 0, 1, 2
_LATENCY = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s)?\s*$")
_RATIO = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(%)?\s*$")
LATENCY_OPTIONS = {"p50": "p50_ms", "p90": "p90_ms", "p99": "p99_ms", "p999": "p999_ms"}


class PlanInputError(ValueError):
    """A bad option or run; the message is the one line to show."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    plan = sub.add_parser(
        "plan",
        help="how many workers for R req/s at an SLO, answered from an existing run "
        "(exit 0 answered, 1 none measured serves it, 2 bad input)",
    )
    plan.add_argument("run", type=Path, help="a run's directory (with meta.json)")
    plan.add_argument("--rate", type=float, help="the req/s to plan for")
    for name in LATENCY_OPTIONS:
        plan.add_argument(f"--{name}", metavar="LATENCY", help=f"{name} bound, e.g. 50ms or 0.05s")
    plan.add_argument("--failure-ratio", metavar="RATIO", help="failure ratio bound, e.g. 0.1%%")


def slo_table(args: argparse.Namespace) -> dict[str, float]:
    """The options' bounds as an [slo] table (latency in ms, failure ratio as a fraction)."""
    table: dict[str, float] = {}
    for name, metric in LATENCY_OPTIONS.items():
        text = getattr(args, name)
        if text is None:
            continue
        found = _LATENCY.match(text)
        if not found or float(found.group(1)) <= 0:
            raise PlanInputError(f"--{name}: expected a latency like 50ms or 0.05s, got {text!r}")
        scale = 1000.0 if found.group(2) == "s" else 1.0
        table[metric] = float(found.group(1)) * scale
    if args.failure_ratio is not None:
        found = _RATIO.match(args.failure_ratio)
        value = float(found.group(1)) / (100 if found.group(2) else 1) if found else -1.0
        if not 0 <= value <= 1:
            raise PlanInputError(
                f"--failure-ratio: expected a ratio like 0.1% or 0.001, got {args.failure_ratio!r}"
            )
        table["failure_ratio"] = value
    if args.rate is not None and not args.rate > 0:
        raise PlanInputError(f"--rate: expected a positive number of req/s, got {args.rate:g}")
    return table


def run(args: argparse.Namespace) -> int:
    from clusterlab.lab.analysis.analysis import derive_point_columns, target_cpus
    from clusterlab.lab.analysis.capacity import capacities, capacity_table
    from clusterlab.lab.analysis.recommend import recommend_slo
    from clusterlab.lab.analysis.tables import load_results
    from clusterlab.lab.config.slo import parse_slo
    from clusterlab.lab.output.capacity_report import slo_table as answer_table
    from clusterlab.lab.output.text import plain_table

    try:
        table = slo_table(args)
        if not (args.run / "meta.json").is_file():
            raise PlanInputError(f"RUN: expected a run directory with meta.json, got {args.run}")
        results = load_results(args.run)
        table = table or dict(results.meta["scenario"].get("slo") or {})
        table.pop("rate", None)
        if not table:
            raise PlanInputError(
                "--p99: expected a bound (--p50, --p90, --p99, --p999 or --failure-ratio), "
                "or a run with an [slo] table, got neither"
            )
        slo = parse_slo(table)
    except PlanInputError as exc:
        print(f"clusterlab: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    points = derive_point_columns(results)
    found = capacity_table(capacities(points, slo)) if not points.empty else capacity_table([])
    advice = recommend_slo(found, slo, args.rate, target_cpus(results.meta))
    print(advice.text())
    if not found.empty:
        answers = answer_table(found)
        print(plain_table(list(answers.columns), answers.values.tolist()))
    served = advice.workers is not None if args.rate is not None else advice.best_rps is not None
    return EXIT_OK if served else EXIT_NONE
