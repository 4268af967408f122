"""The report's figures (matplotlib, Agg, PNG): throughput, fairness and p99 latency against
worker count per policy, per-worker share, the USL fit, and the timeline of runs with faults.
One function per figure; each takes the tables and metrics, writes one file and returns its path
(or None when there is nothing to draw).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.artist import Artist  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FixedLocator, MaxNLocator  # noqa: E402

from clusterlab.lab.analysis.metrics import group_verdict, usl  # noqa: E402
from clusterlab.lab.analysis.recovery import SPAN_S, detail  # noqa: E402
from clusterlab.lab.analysis.recovery import throughput as ok_rate  # noqa: E402
from clusterlab.lab.protocol import Event  # noqa: E402

COLORS = {"rr": "tab:blue", "none": "tab:orange", "reuseport": "tab:green", "n/a": "tab:gray"}
#: Marker per verdict: only target-bound points are filled (they measure the target's capacity).
VERDICT_MARKERS: dict[str, dict[str, Any]] = {
    "target": dict(marker="o"),
    "generator": dict(marker="o", mfc="white"),
    "machine": dict(marker="s", mfc="white"),
    "unsaturated": dict(marker="^", mfc="white"),
    "mixed": dict(marker="D", mfc="white"),
}


def _panels(workloads: list[str], height: float = 3.6) -> tuple[Figure, list[plt.Axes]]:
    fig, axes = plt.subplots(
        1, len(workloads), figsize=(5.2 * len(workloads), height), squeeze=False
    )
    return fig, list(axes[0])


def _save(fig: Figure, path: Path) -> Path:
    for ax in fig.axes:
        if not isinstance(ax.xaxis.get_major_locator(), FixedLocator):  # ticks set on purpose
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    # a figure-wide legend (the verdict markers) sits below the panels
    fig.tight_layout(rect=(0, 0.07, 1, 1) if fig.legends else (0, 0, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _ok(results: pd.DataFrame) -> pd.DataFrame:
    return results[results["status"] == "ok"]


def _by_policy(frame: pd.DataFrame, column: str) -> dict[str, pd.DataFrame]:
    """Per policy: per worker count, median/min/max of ``column`` and the repeats' verdict."""
    out = {}
    for policy, group in frame.groupby("policy", sort=True):
        grouped = group.groupby("workers")
        table = grouped[column].agg(["median", "min", "max"])
        table["verdict"] = grouped["verdict"].agg(group_verdict)
        out[str(policy)] = table.reset_index()
    return out


def _draw_series(ax: plt.Axes, policy: str, table: pd.DataFrame) -> None:
    color = COLORS.get(policy, "tab:purple")
    x = table["workers"].to_numpy(dtype=float)
    ax.plot(x, table["median"], "-", color=color, label=policy)
    ax.fill_between(x, table["min"], table["max"], color=color, alpha=0.15, linewidth=0)
    median = table["median"].to_numpy(dtype=float)
    spread = [
        median - table["min"].to_numpy(dtype=float),
        table["max"].to_numpy(dtype=float) - median,
    ]
    ax.errorbar(x, median, yerr=spread, fmt="none", ecolor=color, capsize=3, linewidth=1)
    _verdict_markers(ax, x, table["median"].to_numpy(dtype=float), table["verdict"], color)


def _verdict_markers(
    ax: plt.Axes, x: np.ndarray, y: np.ndarray, verdicts: pd.Series, color: str
) -> None:
    """Each point with its verdict's marker (filled only when target-bound)."""
    labels = verdicts.to_numpy(dtype=str)
    for verdict, style in VERDICT_MARKERS.items():
        mine = labels == verdict
        if mine.any():
            ax.plot(x[mine], y[mine], linestyle="none", color=color, mec=color, mew=1.5, **style)


def _verdict_legend(fig: Figure) -> None:
    """One legend of the marker shapes, under the panels."""
    handles = [
        Line2D([], [], color="0.3", linestyle="none", mec="0.3", mew=1.5, label=name, **style)
        for name, style in VERDICT_MARKERS.items()
    ]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7, frameon=False)


def _series_figure(
    done: pd.DataFrame,
    column: str,
    labels: tuple[str, str],
    path: Path,
    extra: Callable[[plt.Axes, dict[str, pd.DataFrame]], None] | None = None,
) -> Path:
    """One panel per workload: ``column`` vs workers per policy (median line, min–max band over
    repeats, verdict markers), and ``extra`` drawing more on the panel from the policies' tables;
    ``labels``: the y axis's and the figure's title. The verdict legend below the panels."""
    ylabel, title = labels
    workloads = sorted(done["workload"].unique())
    fig, axes = _panels(workloads)
    for ax, workload in zip(axes, workloads, strict=True):
        tables = _by_policy(done[done["workload"] == workload], column)
        for policy, table in tables.items():
            _draw_series(ax, policy, table)
        if extra is not None:
            extra(ax, tables)
        ax.set(title=workload, xlabel="workers", ylabel=ylabel)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
    fig.suptitle(f"{title} (marker: the verdict, legend below)", fontsize=10)
    _verdict_legend(fig)
    return _save(fig, path)


def throughput(results: pd.DataFrame, parallelism: int, path: Path) -> Path | None:
    """Successful requests/s vs workers per policy: median line, min–max band over repeats,
    dashed ideal linear scaling from the smallest worker count, dotted line at the CPU count."""
    done = _ok(results)
    if done.empty:
        return None
    n0 = float(done["workers"].min())
    measured = np.array(sorted(done["workers"].unique()), dtype=float)

    def ideal_and_cpus(ax: plt.Axes, tables: dict[str, pd.DataFrame]) -> None:
        x0 = max(float(t.loc[t["workers"] == n0, "median"].max()) for t in tables.values())
        # linear scaling is the ideal only while each worker has a CPU of its own
        xs = measured[measured <= max(n0, parallelism)]
        ax.plot(xs, x0 * xs / n0, "--", color="gray", linewidth=1, label="ideal linear")
        ax.set_xticks(measured)
        ax.axvline(
            parallelism,
            color="black",
            linestyle=":",
            linewidth=1,
            label=f"available_parallelism() = {parallelism}",
        )

    labels = ("successful requests/s", "Throughput vs workers")
    return _series_figure(done, "rps", labels, path, ideal_and_cpus)


def fairness(results: pd.DataFrame, path: Path) -> Path | None:
    """Jain's index over workers vs workers per policy: requests solid, connections dashed."""
    done = _ok(results).dropna(subset=["jain_requests"])
    if done.empty:
        return None
    workloads = sorted(done["workload"].unique())
    fig, axes = _panels(workloads)
    for ax, workload in zip(axes, workloads, strict=True):
        subset = done[done["workload"] == workload]
        for policy, group in subset.groupby("policy", sort=True):
            color = COLORS.get(str(policy), "tab:purple")
            med = group.groupby("workers")[["jain_requests", "jain_connections"]].median()
            ax.plot(med.index, med["jain_requests"], "o-", color=color, label=f"{policy} requests")
            if med["jain_connections"].notna().any():
                ax.plot(
                    med.index,
                    med["jain_connections"],
                    "s--",
                    color=color,
                    alpha=0.7,
                    label=f"{policy} connections",
                )
        xs = np.array(sorted(subset["workers"].unique()), dtype=float)
        ax.plot(xs, 1 / xs, ":", color="gray", linewidth=1, label="worst (1/n)")
        ax.set(title=workload, xlabel="workers", ylabel="Jain's fairness index", ylim=(0, 1.05))
        ax.legend(fontsize=7)
    fig.suptitle("Fairness over workers (1 = perfectly even)", fontsize=10)
    return _save(fig, path)


def latency(results: pd.DataFrame, path: Path) -> Path | None:
    """p99 latency vs workers per policy, median over repeats with min–max band."""
    done = _ok(results)
    if done.empty:
        return None
    return _series_figure(done, "p99_ms", ("p99 latency (ms)", "p99 latency vs workers"), path)


def share(results: pd.DataFrame, workers: pd.DataFrame, path: Path) -> Path | None:
    """Each worker's share of requests at the largest worker count, per workload and policy;
    workers sorted by share (identity does not carry over between repeats); line = fair share."""
    done = _ok(results)
    if done.empty or workers.empty:
        return None
    top = int(done["workers"].max())  # 0 for a url target: all its points
    rows = done[done["workers"] == top][["point", "repeat", "workload", "policy"]]
    merged = workers.merge(rows, on=["point", "repeat", "workload", "policy"])
    if merged.empty:
        return None
    workloads = sorted(merged["workload"].unique())
    policies = sorted(merged["policy"].unique())
    fig, axes = plt.subplots(
        len(workloads),
        len(policies),
        squeeze=False,
        sharey=True,
        figsize=(4.2 * len(policies), 2.8 * len(workloads)),
    )
    for i, workload in enumerate(workloads):
        for j, policy in enumerate(policies):
            ax = axes[i][j]
            subset = merged[(merged["workload"] == workload) & (merged["policy"] == policy)]
            shares = []
            for _, group in subset.groupby(["point", "repeat"]):
                total = group["requests"].sum()
                if total > 0:
                    shares.append(np.sort(group["requests"].to_numpy(dtype=float) / total)[::-1])
            if shares:
                width = max(len(s) for s in shares)
                padded = np.array([np.pad(s, (0, width - len(s))) for s in shares]) * 100
                ax.bar(
                    np.arange(1, width + 1),
                    padded.mean(axis=0),
                    color=COLORS.get(policy, "tab:purple"),
                )
                ax.axhline(
                    100 / width,
                    color="black",
                    linestyle="--",
                    linewidth=1,
                    label=f"fair share {100 / width:.1f}%",
                )
                ax.legend(fontsize=7)
            ax.set(
                title=f"{workload} · {policy} · {top or 'all'} workers",
                xlabel="worker (sorted by share)",
                ylabel="share of requests (%)",
            )
    return _save(fig, path)


def usl_plot(results: pd.DataFrame, fits: pd.DataFrame, path: Path) -> Path | None:
    """Measured throughput and the fitted Universal Scalability Law curve per policy, with the
    predicted peak N* marked."""
    if fits.empty:
        return None
    done = _ok(results)
    workloads = sorted(fits["workload"].unique())
    fig, axes = _panels(workloads, height=4.0)
    for ax, workload in zip(axes, workloads, strict=True):
        subset = done[done["workload"] == workload]
        for fit in fits[fits["workload"] == workload].to_dict("records"):
            policy = str(fit["policy"])
            color = COLORS.get(policy, "tab:purple")
            pts = subset[subset["policy"] == policy]
            _verdict_markers(
                ax,
                pts["workers"].to_numpy(dtype=float),
                pts["rps"].to_numpy(dtype=float),
                pts["verdict"],
                color,
            )
            top = max(float(pts["workers"].max()), float(fit["peak_workers"] or 0)) * 1.3
            n = np.linspace(1, max(top, 2.0), 200)
            label = f"{policy}: σ={fit['sigma']:.3f} κ={fit['kappa']:.4f} R²={fit['r2']:.2f}"
            ax.plot(
                n, usl(n, fit["lam"], fit["sigma"], fit["kappa"]), "-", color=color, label=label
            )
            if fit["peak_workers"] and np.isfinite(fit["peak_workers"]):
                ax.axvline(fit["peak_workers"], color=color, linestyle=":", linewidth=1)
                ax.annotate(
                    f"N*≈{fit['peak_workers']:.1f}",
                    (fit["peak_workers"], fit["peak_rps"]),
                    fontsize=7,
                    color=color,
                )
        ax.set(title=workload, xlabel="workers (N)", ylabel="successful requests/s")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
    fig.suptitle("Universal Scalability Law fit X(N) = λN / (1 + σ(N−1) + κN(N−1))", fontsize=10)
    return _save(fig, path)


#: Panels of the timeline at most (rows of workload × workers × repeat, one column per policy).
TIMELINE_ROWS = 4
_LEGEND_IN = 0.8  # inches below the panels for the shared legend
_MARKERS = {
    Event.FAULT: ("tab:red", "-", 1.6, "fault takes effect"),
    Event.HANG_DETECTED: ("tab:purple", ":", 1.6, "hang detected (heartbeat)"),
    Event.LISTENING: ("tab:green", "--", 1.2, "replacement listening"),
    Event.RESTART_LIMIT: ("black", "-", 3.0, "restart limit reached"),
}


def timeline(
    results: pd.DataFrame,
    timeseries: pd.DataFrame,
    events: pd.DataFrame,
    per_fault: pd.DataFrame,
    path: Path,
) -> Path | None:
    """Throughput (100 ms bins, line: 0.5 s mean) and failures/s (red, right axis) over time
    for every point with faults, one column per policy, with markers: each fault as it takes
    effect (red), hangs detected (purple), replacements listening (green dashed), the restart
    limit (black); dots where throughput is back to 90 %; warm-up shaded."""
    done = _ok(results)
    with_faults = set(zip(per_fault["point"], per_fault["repeat"], strict=True))
    done = done[[(p, r) in with_faults for p, r in zip(done["point"], done["repeat"], strict=True)]]
    if done.empty:
        return None
    policies = list(dict.fromkeys(done["policy"]))
    rows = list(dict.fromkeys(zip(done["workload"], done["workers"], done["repeat"], strict=True)))
    shown = rows[:TIMELINE_ROWS]
    fig, axes = plt.subplots(
        len(shown),
        len(policies),
        squeeze=False,
        sharex=True,
        figsize=(6.4 * len(policies), 3.4 * len(shown) + _LEGEND_IN),
    )
    top = 0.0
    for i, (workload, workers, repeat) in enumerate(shown):
        for j, policy in enumerate(policies):
            ax = axes[i][j]
            match = done[
                (done["workload"] == workload)
                & (done["workers"] == workers)
                & (done["repeat"] == repeat)
                & (done["policy"] == policy)
            ]
            if match.empty:
                ax.set_visible(False)
                continue
            top = max(top, _timeline_panel(ax, match.iloc[0], timeseries, events, per_fault))
    for ax in axes.flat:  # one throughput scale for every panel, to compare policies by eye
        ax.set_ylim(0, top * 1.05 or 1.0)
    legend: dict[str, Artist] = {}
    for ax in fig.axes:  # every panel and its failures axis: each marker kind once
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    fig.legend(
        list(legend.values()), list(legend), loc="lower center", ncol=4, fontsize=8, frameon=False
    )
    more = f" (first {TIMELINE_ROWS} of {len(rows)})" if len(rows) > len(shown) else ""
    fig.suptitle(f"Faults and recovery over time{more}", fontsize=10)
    height = fig.get_size_inches()[1]
    fig.tight_layout(rect=(0, _LEGEND_IN / height, 1, 1 - 0.3 / height))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _failure_bars(ax: plt.Axes, series: pd.DataFrame, width: float) -> None:
    """Failed requests/s per bin, as red bars on a right-hand axis."""
    fails = series[(series["source"] == "locust") & (series["series"] == "fail_100ms")]
    per_bin = fails.groupby("t")["value"].sum() / width
    failures = ax.twinx()
    failures.bar(
        per_bin.index,
        per_bin.to_numpy(),
        width=width,
        color="tab:red",
        alpha=0.45,
        label="failed req/s",
    )
    failures.set_ylabel("failed req/s", color="tab:red", fontsize=8)
    failures.tick_params(axis="y", labelcolor="tab:red", labelsize=7)
    failures.set_ylim(bottom=0)


def _event_lines(ax: plt.Axes, happened: pd.DataFrame, faults: pd.DataFrame) -> None:
    """A vertical line per fault, hang detected, replacement listening and restart limit."""
    lines = {
        Event.FAULT: faults["t_effect"].dropna().to_numpy(dtype=float),
        Event.HANG_DETECTED: happened.loc[happened["event"] == Event.HANG_DETECTED, "t"].to_numpy(
            float
        ),
        Event.LISTENING: faults["t_listening"].dropna().to_numpy(dtype=float),
        Event.RESTART_LIMIT: happened.loc[happened["event"] == Event.RESTART_LIMIT, "t"].to_numpy(
            float
        ),
    }
    for name, times in lines.items():
        color, style, width, label = _MARKERS[name]
        for k, t in enumerate(times):
            ax.axvline(
                t, color=color, linestyle=style, linewidth=width, label=label if k == 0 else None
            )


def _slow_spans(ax: plt.Axes, happened: pd.DataFrame) -> None:
    """A band over each slow fault's window: from its ``fault`` event to its ``fault_end``."""
    slow = happened[happened["kind"] == "slow"]
    starts = slow[slow["event"] == Event.FAULT]
    ends = slow[slow["event"] == Event.FAULT_END]
    for k, (_, start) in enumerate(starts.iterrows()):
        fault_id = detail(start["detail"]).get("id")
        end = [e["t"] for _, e in ends.iterrows() if detail(e["detail"]).get("id") == fault_id]
        ax.axvspan(
            float(start["t"]),
            float(end[0]) if end else float(start["t"]),
            color="tab:orange",
            alpha=0.15,
            zorder=0,
            label="slow worker" if k == 0 else None,
        )


def _timeline_panel(
    ax: plt.Axes,
    row: pd.Series,
    timeseries: pd.DataFrame,
    events: pd.DataFrame,
    per_fault: pd.DataFrame,
) -> float:
    """Draw one point; return the highest throughput drawn."""

    def mine(frame: pd.DataFrame) -> pd.DataFrame:
        return frame[(frame["point"] == row["point"]) & (frame["repeat"] == row["repeat"])]

    series, happened, faults = mine(timeseries), mine(events), mine(per_fault)
    color = COLORS.get(str(row["policy"]), "tab:purple")
    rps = ok_rate(series)
    width = float(np.median(np.diff(rps.index))) if len(rps) > 1 else 0.1
    smooth = rps.rolling(max(1, round(SPAN_S / width)), center=True, min_periods=1).mean()
    ax.plot(rps.index, rps.to_numpy(), color=color, alpha=0.25, linewidth=0.6)
    ax.plot(smooth.index, smooth.to_numpy(), color=color, linewidth=1.4, label="successful req/s")
    ax.axvspan(min(0.0, float(rps.index.min()) if len(rps) else 0.0), 0, color="0.9", zorder=0)
    _failure_bars(ax, series, width)
    _event_lines(ax, happened, faults)
    _slow_spans(ax, happened)
    back = faults.dropna(subset=["to_recover_s"])
    if len(back) and len(smooth):
        at = back["t_effect"].to_numpy(float) + back["to_recover_s"].to_numpy(float)
        ax.plot(
            at,
            np.interp(at, smooth.index, smooth.to_numpy()),
            "o",
            color="tab:green",
            markersize=5,
            label="back to 90 %",
        )
    lost = row.get("rr_dropped")
    lost_text = f", RR lost {lost:.0f}" if isinstance(lost, float) and np.isfinite(lost) else ""
    crashed = faults[faults["exit_kind"].notna()]
    ax.set_title(
        f"{row['policy']} · {row['workers']} workers · {row['workload']} · repeat "
        f"{int(row['repeat']) + 1}: {len(crashed)} crashes, "
        f"{int(crashed['replacement'].notna().sum())} replaced{lost_text}",
        fontsize=9,
    )
    ax.set(xlabel="seconds from start of measurement (warm-up shaded)", ylabel="successful req/s")
    return float(smooth.max()) if len(smooth) else 0.0


_PERCENTILES = (("p50_ms", "--", "p50"), ("p99_ms", "-", "p99"), ("p999_ms", ":", "p99.9"))


def hockey_stick(results: pd.DataFrame, knees: pd.DataFrame, path: Path) -> Path | None:
    """Latency (p50 dashed, p99 solid with its min–max band over repeats, p99.9 dotted)
    against achieved throughput at each load level, one panel per workload × policy, one
    colour per worker count; Kneedle's knee of p99 marked ✕ (with 5+ levels)."""
    done = _ok(results)
    done = done[done["level"].notna()] if "level" in done else done.iloc[0:0]
    if done.empty:
        return None
    panels = sorted({(str(m), str(p)) for m, p in zip(done["mix"], done["policy"], strict=True)})
    fig, axes = _panels([f"{m} · {p}" for m, p in panels], height=4.0)
    colors = plt.get_cmap("viridis")
    counts = sorted(done["workers"].unique())
    for ax, (mix, policy) in zip(axes, panels, strict=True):
        mine = done[(done["mix"] == mix) & (done["policy"] == policy)]
        for i, workers in enumerate(counts):
            series = mine[mine["workers"] == workers]
            if series.empty:
                continue
            color = colors(i / max(1, len(counts) - 1) * 0.85)
            _hockey_series(ax, series, color, f"{workers} worker{'s' if workers != 1 else ''}")
            knee = knees[
                (knees["mix"] == mix) & (knees["policy"] == policy) & (knees["workers"] == workers)
            ]
            for k in knee.to_dict("records"):
                if np.isfinite(k["knee_rps"]):
                    ax.plot(k["knee_rps"], k["knee_p99_ms"], "x", color=color, ms=10, mew=2)
        ax.set(title=f"{mix} · {policy}", xlabel="successful requests/s", ylabel="latency (ms)")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.suptitle("Latency against throughput: p50 --, p99 —, p99.9 ··· (✕ = knee)", fontsize=10)
    return _save(fig, path)


def _hockey_series(ax: plt.Axes, series: pd.DataFrame, color: Any, label: str) -> None:
    """One worker count's curve, in order of load (past saturation req/s can fall back)."""
    by_level = series.groupby("level", sort=True)
    curve = by_level[["rps", "p50_ms", "p99_ms", "p999_ms"]].median()
    spread = by_level["p99_ms"].agg(["min", "max"])
    x = curve["rps"].to_numpy(dtype=float)
    for column, style, _ in _PERCENTILES:
        ax.plot(x, curve[column], style, color=color, label=label if column == "p99_ms" else None)
    ax.fill_between(x, spread["min"], spread["max"], color=color, alpha=0.15, linewidth=0)
    verdicts = by_level["verdict"].agg(group_verdict)
    _verdict_markers(ax, x, curve["p99_ms"].to_numpy(dtype=float), verdicts, color)


def efficiency_plot(table: pd.DataFrame, path: Path) -> Path | None:
    """Req/s per core the target used (left) and its CPU headroom, the share of its CPUs left
    unused (right), against worker count per workload and policy (each count at its busiest
    load level, median over repeats)."""
    if table.empty or table["rps_per_core"].isna().all() or table["workers"].nunique() < 2:
        return None  # a curve against worker count needs two counts
    fig, (left, right) = _panels(["per core", "headroom"], height=3.6)
    for (mix, policy), group in table.groupby(["mix", "policy"], sort=True):
        ordered = group.sort_values("workers")
        color = COLORS.get(str(policy), "tab:purple")
        style = "-" if mix == sorted(table["mix"].unique())[0] else "--"
        x = ordered["workers"].to_numpy(dtype=float)
        left.plot(
            x, ordered["rps_per_core"], style, marker="o", color=color, label=f"{mix} · {policy}"
        )
        right.plot(
            x, 100 * ordered["headroom"], style, marker="o", color=color, label=f"{mix} · {policy}"
        )
    left.set(title="Efficiency", xlabel="workers", ylabel="req/s per core used by the target")
    right.set(title="CPU headroom", xlabel="workers", ylabel="% of the target's CPUs unused")
    left.set_ylim(bottom=0)
    right.set_ylim(0, 100)
    left.legend(fontsize=7)
    return _save(fig, path)
