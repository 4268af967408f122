"""The report's policy comparison: a table of each policy's latency tail and fairness with
spread per workload, worker count and fault, one line per case (the lowest p99, and whether it
matches queueing theory), and the figure of the same numbers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from clusterlab.lab.analysis.analysis import Analysis  # noqa: E402
from clusterlab.lab.analysis.open_faithful import LATE_MAX, RATE_TOLERANCE  # noqa: E402
from clusterlab.lab.analysis.policies import (  # noqa: E402
    Case,
    cases,
    compares_policies,
    policy_table,
)
from clusterlab.lab.output.report_tables import verdict_label  # noqa: E402
from clusterlab.lab.output.text import fmt  # noqa: E402

HELP = (
    "Per workload, worker count and fault, each policy's latency percentiles (median over "
    "repeats, [min–max]) and Jain's index of per-worker requests. Queueing theory: under "
    "heterogeneous service times, or with one slow worker, policies that see the workers' load "
    "(least-conn, p2c, jiq) keep short requests from waiting behind long ones and should show "
    "a lower p99 than blind assignment (rr; reuseport, which hashes each connection onto one "
    "worker's accept queue). A case is called only when the two sides' p99 ranges over repeats "
    "do not overlap and no repeat's latencies are other than the target's (a closed-model "
    "repeat limited by the load generator or the machine; an open-model repeat not faithful to "
    "its asked rate, see below). none is "
    "beside the call: one accept queue shared by all workers, each accepting when its loop is "
    "free, is a central queue the workers pull from, which theory puts level with or ahead of "
    "any dispatching policy."
)
PLOT_HELP = (
    "p50 (circle), p99 (square), p99.9 (triangle) and max (cross) latency per policy, one panel "
    "per workload × workers (its fault in the title); bars span min–max over repeats; log scale."
)
_COLUMNS = (
    ("p50_ms", "p50 ms"),
    ("p99_ms", "p99 ms"),
    ("p999_ms", "p99.9 ms"),
    ("max_ms", "max ms"),
)


def _spread(row: dict[str, Any], figure: str, digits: int) -> str:
    text = fmt(row[figure], digits)
    if row["repeats"] > 1:
        text += f" [{fmt(row[f'{figure}_min'], digits)}–{fmt(row[f'{figure}_max'], digits)}]"
    return text


def table(analysis: Analysis) -> pd.DataFrame:
    """The comparison, or an empty frame when the sweep compares no scheduler."""
    if not compares_policies(list(analysis.scenario["sweep"]["policies"])):
        return pd.DataFrame()
    return policy_table(analysis.points, analysis.scenario.get("faults") or [])


def comparison_table(frame: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for r in frame.to_dict("records"):
        rows.append(
            {
                "workload": r["workload"],
                "workers": r["workers"],
                "fault": r["fault"],
                "policy": r["policy"],
                **{label: _spread(r, figure, 1) for figure, label in _COLUMNS},
                "Jain req": _spread(r, "jain_requests", 3),
                "repeats": r["repeats"],
                "verdict": verdict_label(r["verdict"]),
            }
        )
        if r.get("open"):
            rows[-1]["faithful"] = f"{r['faithful']}/{r['open']}"
    return pd.DataFrame(rows)


FAITHFUL_LINE = (
    "Verdicts: the open-model points run below capacity, so each is unsaturated by design; the "
    "target-bound verdict is the capacity probe's, and each point is instead checked as "
    "faithful (arrivals within {tol:g}% of the asked rate, at most {late:g}% sent late, the load "
    "generator not at its CPU limit): {faithful} of {open} faithful."
)


def probe_lines(analysis: Analysis) -> list[str]:
    """The capacity probes (load.rate as a share of capacity) in words, one per case."""
    lines = []
    for probe in analysis.meta.get("capacity_probes") or []:
        case = f"Capacity probe, {probe['workload']}, {probe['workers']} workers"
        if probe.get("error"):
            lines.append(f"{case}: FAILED ({probe['error']}); its points did not run.")
            continue
        lines.append(
            f"{case} ({probe['policy']}, closed model, {probe['users']} users, no fault): "
            f"{probe['capacity_rps']:.0f} req/s, {verdict_label(probe['verdict'])} "
            f"({probe['why']}); its points ran at {100 * probe['share']:g}% of it, "
            f"{probe['rate']:.0f} req/s."
        )
    return lines


def faithful_line(frame: pd.DataFrame) -> str | None:
    """The one line on open-model points' verdicts and their faithfulness (None: no
    open-model point), with the reasons of the points that were not faithful."""
    opened = int(frame["open"].sum()) if "open" in frame else 0
    if not opened:
        return None
    line = FAITHFUL_LINE.format(
        tol=100 * RATE_TOLERANCE,
        late=100 * LATE_MAX,
        faithful=int(frame["faithful"].sum()),
        open=opened,
    )
    misses = [
        f"{r['workload']} · {r['policy']}: {r['unfaithful']}"
        for r in frame.to_dict("records")
        if r.get("unfaithful")
    ]
    return line + (" Not faithful: " + "; ".join(misses) + "." if misses else "")


def case_line(case: Case) -> str:
    """A case in words: the lowest p99 (clear or within the spread) and theory's call."""
    lead = f"{case.workload}, {case.workers} workers, fault {case.fault}: lowest p99 {case.best}"
    if case.repeats < 2:
        lead += f" (one repeat: not tested against {case.runner_up})"
    elif case.separated:
        lead += " (below every other policy's range)"
    else:
        lead += f" (its range overlaps {case.runner_up}'s)"
    says = {
        "matches": "matches queueing theory",
        "contradicts": "does NOT match queueing theory",
        "tie": "theory's ordering not shown at this spread",
        "untrusted": "not compared with theory",
        "n/a": "theory not applicable",
    }[case.theory]
    return f"{lead}; {says}: {case.note}."


def closing_lines(analysis: Analysis) -> list[str]:
    """The cases in words, for the end of ``clusterlab run``'s output."""
    frame = table(analysis)
    if frame.empty:
        return []
    said = faithful_line(frame)
    return [*probe_lines(analysis), *([said] if said else []), *map(case_line, cases(frame))]


def blocks(analysis: Analysis, block: Callable[..., Any]) -> list[Any]:
    """The Policies section (nothing when the sweep compares no scheduler); its figure is
    among the plots."""
    frame = table(analysis)
    if frame.empty:
        return []
    out = [
        block("h2", "Policies compared"),
        block("p", HELP),
        *[block("p", line) for line in probe_lines(analysis)],
        block("table", table=comparison_table(frame)),
    ]
    if said := faithful_line(frame):
        out.append(block("p", said))
    out += [block("p", case_line(c)) for c in cases(frame)]
    return out


_MARKS = (("p50_ms", "o"), ("p99_ms", "s"), ("p999_ms", "^"), ("max_ms", "x"))


def plot(analysis: Analysis, path: Path) -> Path | None:
    """The comparison's figure, or None when there is nothing to compare."""
    frame = table(analysis)
    if frame.empty:
        return None
    groups = list(frame.groupby(["workload", "workers"], sort=False))
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups) + 0.5, 3.8), squeeze=False)
    for ax, ((workload, workers), group) in zip(axes[0], groups, strict=True):
        x = np.arange(len(group))
        for k, (figure, marker) in enumerate(_MARKS):
            mid = group[figure].to_numpy(float)
            low = mid - group[f"{figure}_min"].to_numpy(float)
            high = group[f"{figure}_max"].to_numpy(float) - mid
            ax.errorbar(
                x + (k - 1.5) * 0.12,
                mid,
                yerr=[low, high],
                fmt=marker,
                markersize=5,
                capsize=2,
                label=figure.removesuffix("_ms").replace("p999", "p99.9"),
            )
        ax.set_xticks(x, group["policy"].tolist(), rotation=30, fontsize=8)
        ax.set_yscale("log")
        ax.set_title(f"{workload} · {workers} workers\nfault: {group['fault'].iloc[0]}", fontsize=9)
        ax.set_ylabel("latency ms")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
