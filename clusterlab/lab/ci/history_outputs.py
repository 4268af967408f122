"""Outputs of ``clusterlab history``: the check's headline, terminal and Markdown tables and JSON,
a metric's runs as a table, and its plot over time with change points and their commit ranges."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from clusterlab.lab.ci.trend import Change, HistoryCheck, SeriesCheck  # noqa: E402
from clusterlab.lab.output.text import markdown_table, plain_table  # noqa: E402

HEADERS = ["", "metric", "group", "runs", "newest", "newest vs level", "change points", "status"]
MARKS = {"regression": "+", "inconclusive": "?", "improvement": "-", "": " "}


def pct(change: float) -> str:
    return "from 0" if math.isinf(change) else f"{change:+.1%}".replace("%", " %")


def change_text(change: Change, gating: bool = True) -> str:
    """``regression -12.2 % at run 17 (c015..c016; 473.7 → 415.9, p 0.001, open)``: open when it
    fails the check (a gated regression among the recent runs)."""
    p = change.point
    failing = gating and change.open and change.kind == "regression"
    return (
        f"{change.kind} {pct(p.change)} at run {change.run} ({change.commits}; "
        f"{p.before:.4g} → {p.after:.4g}, p {p.p_value:.3f}{', open' if failing else ''})"
    )


def _newest_text(s: SeriesCheck) -> str:
    if s.latest is None:
        return "–"
    z = "∞" if math.isinf(s.latest.z) else f"{s.latest.z:+.1f}"
    mark = f" {s.latest_kind.upper()}" if s.latest_kind else ""
    return f"{pct(s.latest.change)} ({z} σ over {s.latest.runs}){mark}"


def _mark(s: SeriesCheck) -> str:
    if s.regressed:
        return MARKS["regression"]
    if s.undecided:
        return MARKS["inconclusive"]
    return MARKS["improvement"] if any(c.kind == "improvement" for c in s.changes) else " "


def _rows(check: HistoryCheck) -> list[list[Any]]:
    return [
        [
            _mark(s),
            s.metric + ("" if s.gating else " (info)"),
            s.group,
            f"{len(s.values)}" + (f" (+{s.untrusted} untrusted)" if s.untrusted else ""),
            f"{s.values[-1]:.4g}" if s.values else "–",
            _newest_text(s),
            "; ".join(change_text(c, s.gating) for c in s.changes) or "none",
            s.status,
        ]
        for s in sorted(check.series, key=lambda s: (not s.regressed, not s.undecided))
    ]


def headline(check: HistoryCheck) -> str:
    """The outcome in one line, as ``compare`` words it."""
    gated = [s for s in check.series if s.gating]
    where = f"{check.runs} runs of {check.scenario or '(none)'} on {check.fingerprint or '–'}"
    if check.outcome == "regression":
        names = ", ".join(s.name for s in gated if s.regressed)
        return f"REGRESSION over {where}: {names}"
    if check.outcome == "inconclusive":
        if not gated:
            return f"INCONCLUSIVE over {where}: no gated series (an empty or new history)"
        names = "; ".join(f"{s.name}: {s.status}" for s in gated if s.undecided)
        return (
            f"INCONCLUSIVE over {where}: {names} (a series needs {check.settings.min_runs} "
            "trusted runs and a trusted newest run)"
        )
    older = sum(len(s.changes) for s in gated)
    also = f"; {older} older change point(s) listed" if older else ""
    return f"no regression over {where}: all {len(gated)} gated series judged{also}"


def method_line(check: HistoryCheck) -> str:
    s = check.settings
    return (
        f"change points: binary segmentation, permutation test of the largest t over splits "
        f"(p ≤ {s.alpha:g}, ≥ {s.min_size} runs a side, |change| ≥ {s.min_change:.0%}), last "
        f"{s.last} runs; regression when among the last {s.recent} runs or the newest run is "
        f"beyond {s.sigmas:g} σ; gated: "
        + ("every series" if s.absolute else "figures that travel between machines")
    )


def terminal(check: HistoryCheck) -> str:
    return "\n".join(
        [headline(check), "", plain_table(HEADERS, _rows(check)), "", method_line(check)]
    )


def markdown(check: HistoryCheck) -> str:
    table = markdown_table(pd.DataFrame(_rows(check), columns=HEADERS))
    return (
        f"### clusterlab history: {check.outcome}\n\n{headline(check)}\n\n{table}\n\n"
        f"_{method_line(check)}_\n"
    )


def to_json(check: HistoryCheck) -> str:
    def series(s: SeriesCheck) -> dict[str, Any]:
        return {
            "metric": s.metric,
            "group": s.group,
            "gating": s.gating,
            "status": s.status,
            "regressed": s.regressed,
            "runs": s.runs,
            "values": s.values,
            "untrusted": s.untrusted,
            "changes": [
                {
                    "kind": c.kind,
                    "run": c.run,
                    "index": c.point.index,
                    "commits": c.commits,
                    "before": c.point.before,
                    "after": c.point.after,
                    "change": None if math.isinf(c.point.change) else c.point.change,
                    "p_value": c.point.p_value,
                    "open": c.open,
                }
                for c in s.changes
            ],
            "newest": None
            if s.latest is None
            else {**s.latest.__dict__, "z": None if math.isinf(s.latest.z) else s.latest.z}
            | {"kind": s.latest_kind or None},
        }

    return json.dumps(
        {
            "outcome": check.outcome,
            "exit_status": check.exit_status,
            "scenario": check.scenario,
            "fingerprint": check.fingerprint,
            "runs": check.runs,
            "settings": check.settings.__dict__,
            "series": [series(s) for s in check.series],
        },
        indent=2,
    )


def runs_table(data: pd.DataFrame, metric: str) -> str:
    """A metric's runs: one row per run, one column per group (``!`` marks untrusted)."""
    mine = data[data["metric"] == metric]
    names = list(dict.fromkeys(mine["group"]))
    rows = []
    for run, figures in mine.groupby("run", sort=False):
        first = figures.iloc[0]
        by_group = {
            g: ("–" if pd.isna(v) else f"{v:.4g}") + ("" if t else " !")
            for g, v, t in zip(figures["group"], figures["value"], figures["trusted"], strict=True)
        }
        facts = [first["time"], first["revision"], first["branch"]]
        rows.append([run, *("" if pd.isna(f) else f for f in facts)])
        rows[-1] += [by_group.get(g, "") for g in names]
    return plain_table(["run", "time", "revision", "branch", *names], rows)


def plot(check: HistoryCheck, metric: str, path: Path, data: pd.DataFrame) -> Path | None:
    """One panel per group of ``metric``: its runs, the level of each segment, and a line at each
    change point labelled with its size and commit range. None when the metric has no series."""
    mine = [s for s in check.series if s.metric == metric]
    if not mine:
        return None
    fig, axes = plt.subplots(len(mine), 1, figsize=(9, 2.8 * len(mine)), squeeze=False)
    order = {run: i + 1 for i, run in enumerate(data["run"].drop_duplicates())}
    for ax, s in zip(axes[:, 0], mine, strict=True):
        _panel(ax, s, data[(data["metric"] == metric) & (data["group"] == s.group)], order)
    axes[-1, 0].set_xlabel("run (oldest first; hollow: untrusted, left out)")
    fig.suptitle(f"{metric} over time: {check.scenario} on {check.fingerprint}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _panel(ax: Any, s: SeriesCheck, rows: pd.DataFrame, order: dict[int, int]) -> None:
    bad = rows[rows["trusted"] != 1]
    x = [order[r] for r in s.runs]
    ax.plot(x, s.values, "o-", color="tab:blue", ms=4, lw=1)
    ax.plot([order[r] for r in bad["run"]], bad["value"], "o", mfc="white", color="tab:gray")
    edges = [0, *(c.point.index for c in s.changes), len(s.values)]
    for a, b in zip(edges, edges[1:], strict=False):
        if b <= a:  # no trusted run in the segment (a history of untrusted runs only)
            continue
        level = sum(s.values[a:b]) / (b - a)
        ax.hlines(level, x[a], x[b - 1], colors="black", lw=1.5, alpha=0.6)
    for c in s.changes:
        color = "tab:red" if c.kind == "regression" else "tab:green"
        at = (x[c.point.index - 1] + x[c.point.index]) / 2
        ax.axvline(at, color=color, ls="--", lw=1)
        ax.annotate(
            f"{pct(c.point.change)}\n{c.commits}",
            (at, 1),
            xycoords=("data", "axes fraction"),
            xytext=(4, -3),
            textcoords="offset points",
            va="top",
            ha="left",
            fontsize=8,
            color=color,
        )
    arrow = "↑ better" if s.direction > 0 else "↓ better"
    ax.set_ylabel(f"{s.group}\n{arrow}", fontsize=8)
    ax.grid(alpha=0.3)
