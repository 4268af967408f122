"""The report's content, section by section, as blocks read from one ``Analysis``; rendered to
Markdown and HTML by ``report``. A section is a function returning its blocks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from clusterlab.lab.analysis.analysis import Analysis
from clusterlab.lab.analysis.summary import NOISY_OTHER_CPU, SUMMARY_VERSION
from clusterlab.lab.output import capacity_report, conclusions, policies
from clusterlab.lab.output import report_tables as tables
from clusterlab.lab.output.report_tables import verdict_label

PLOT_HELP = {
    "throughput": "Successful requests/s against worker count, one line per policy (median over "
    "repeats, band = min–max). Dashed: ideal linear scaling from the smallest count; dotted: "
    "available_parallelism(). Where the line bends away from the dashed one, adding workers stops "
    "paying. Marker shape is the verdict: filled circles are target-bound (the target's "
    "capacity); hollow markers are not (generator: the load was the limit; machine: the two "
    "took CPU from each other; unsaturated: nothing ran out of CPU).",
    "fairness": "Jain's index of per-worker requests (solid) and connections (dashed): 1 = every "
    "worker got the same, 1/n (dotted) = one worker got everything.",
    "latency": "p99 latency against worker count per policy. Rising p99 with more workers than "
    "CPUs shows oversubscription; a gap between policies shows queueing in the primary or uneven "
    "accept.",
    "share": "Each worker's share of the requests at the largest worker count, sorted; the dashed "
    "line is the fair share 1/n. A tall first bar is a hot worker.",
    "usl": "Measured throughput (points) and the Universal Scalability Law fit (line). σ is "
    "contention (serial work), κ coherency cost (crosstalk); N* is the predicted peak.",
    "hockey": "Latency against achieved throughput at each load level (the hockey stick), one "
    "panel per workload and policy, one colour per worker count: p50 dashed, p99 solid (band = "
    "min–max over repeats), p99.9 dotted, log scale; ✕ marks Kneedle's knee of p99 (with 5 or "
    "more levels), where more load starts buying latency rather than throughput.",
    "efficiency": "Left: successful req/s per core the target used; right: the share of the "
    "target's CPUs it left unused (headroom), against worker count, each count at its busiest "
    "load level.",
    "policies": policies.PLOT_HELP,
    "timeline": "Each point with faults over time, one column per policy: successful requests/s "
    "(100 ms bins, faint; 0.5 s mean, solid) and failed requests/s (red bars, right axis). Red "
    "line: a fault takes effect (a signal at once; an armed exception or hang when a request "
    "fires it); purple dotted: the heartbeat timeout caught a hang; green dashed: the "
    "replacement listens; green dot: throughput back to 90 % of the fault-free level; thick "
    "black: the restart limit was reached (no more restarts). Warm-up is shaded.",
}
RECOVERY_HELP = (
    "Per point: faults injected (and skipped: no ready worker, or the load had ended), those that "
    "took effect, crashes (the worker exited) and how many of them were replaced; seconds from "
    "the fault taking effect to the replacement's 'listening' and to throughput back at 90 % of "
    "the point's fault-free level (median / max); failed requests while recovering, by cause; "
    "under rr the connections the primary re-queued from a dying worker and those it lost "
    "(closed unserved: must be 0); restarts scheduled and refused by the restart limit. "
    "Method: throughput is the load's successful requests in 100 ms bins; the fault-free level "
    "is their mean over the measured window before the first fault took effect (at least 1 s), "
    "the same for every fault of the point, so a cluster that stays below it after a crash is "
    "never called recovered; it is back once a 0.5 s span has a mean of at least 90 % of that "
    "level (the time is that span's start; 0 = it never fell that low), searched up to the "
    "next fault's effect (else: not back before the next fault) or the end of measurement "
    "(else: never back within the run). A fault's failures are those in the bins from it to "
    "the next fault's effect (or the end of measurement)."
)


VERDICT_ORDER = ("target", "generator", "machine", "unsaturated")
VERDICT_HELP = (
    "Target-bound: the target's processes used nearly all the CPU they may use (or, sharing the "
    "CPUs, the CPUs were full while the load used little of them): only these rates measure "
    "its capacity. Generator-bound: a load process was at its core. Machine-bound: the CPUs "
    "were full with neither side at its limit. Unsaturated: nothing ran out of CPU."
)
LIFT_LIMITS = (
    'the native load engine (`load.engine = "wrk"`: far less CPU per request), separate CPUs '
    'for load and target (`[cpus] split = "on"` or `--cpu-split on`, on a machine with CPUs '
    "to spare) or more locust processes (load.processes) lift the load's limits."
)


@dataclass(frozen=True)
class Block:
    """One piece of content. ``kind``: h1, h2, p (``text``, after an optional bold ``lead``),
    table (``table``), image (``text`` is the file, ``caption`` its help)."""

    kind: str
    text: str = ""
    lead: str = ""
    table: pd.DataFrame | None = None
    caption: str = ""


def report_blocks(analysis: Analysis, drawn: dict[str, str]) -> list[Block]:
    """Every section of the report in order; ``drawn`` maps plot names to their files."""
    return [
        *_header(analysis),
        *capacity_report.recommendation_blocks(analysis, Block),
        *_summary(analysis),
        *(_recovery(analysis) if analysis.scenario.get("faults") else []),
        *_verdicts(analysis),
        *_conclusions(analysis),
        *policies.blocks(analysis, Block),
        *_noisy(analysis),
        *_load_lost(analysis),
        *_scalability(analysis),
        *capacity_report.capacity_blocks(analysis, Block),
        Block("h2", "Plots"),
        *[Block("image", file, caption=PLOT_HELP[name]) for name, file in drawn.items()],
        *_every_point(analysis),
    ]


def _header(analysis: Analysis) -> list[Block]:
    meta, scenario, machine = analysis.meta, analysis.scenario, analysis.meta["machine"]
    load, points = scenario["load"], analysis.points
    blocks = [Block("h1", f"clusterlab lab report: {scenario['name']}")]
    if meta["partial"]:
        why = "interrupted" if meta["interrupted"] else "not every point finished"
        blocks.append(
            Block(
                "p",
                f"({why}): {len(points)} of {meta['planned_points']} points measured.",
                lead="PARTIAL REPORT",
            )
        )
    if scenario.get("description"):
        blocks.append(Block("p", scenario["description"]))
    processes = sorted(int(p) for p in points["processes"].dropna().unique())
    blocks.append(
        Block(
            "p",
            f"Machine: {machine['cpu_model']}; available_parallelism() = "
            f"{machine['available_parallelism']} (affinity {machine['affinity']}), "
            f"{machine['memory_gb']} GB; Python {machine['python']}; git {machine['git_revision']}. "
            f"Target: {scenario['target']['kind']}. Load: {_engine(meta)}, {load['users']} users, "
            f"{load['model']} model, {load['connection']} connections, {load['warmup']:g} s warm-up "
            f"then {load['duration']:g} s measured, load processes per point "
            f"{processes or load['processes']}. {_placement(meta.get('cpus'))}",
        )
    )
    target = scenario["target"]
    if target["kind"] == "url" and target.get("metrics"):
        blocks.append(
            Block(
                "p",
                f"Per-worker counts come from the target's metrics endpoint, {target['metrics']} "
                "(scraped before and after each window; docs/metrics.md).",
            )
        )
    if target["kind"] == "url" and not (target.get("pid") or target.get("pidfile")):
        blocks.append(
            Block(
                "p",
                "The target's CPU is not measured (a url target without target.pid or "
                "target.pidfile): its verdicts rest on the load's CPU and the machine's.",
            )
        )
    return blocks


def _engine(meta: dict[str, Any]) -> str:
    """The load engine, and why auto chose locust when it did."""
    chosen = meta.get("load") or {"engine": "locust", "why": ""}
    return chosen["engine"] + (f" ({chosen['why'].split(', ', 1)[-1]})" if chosen["why"] else "")


def _placement(cpus: dict[str, Any] | None) -> str:
    if cpus is None:
        return (
            "The load generator and the cluster share this machine's CPUs (no pinning); the "
            "CPU each side used is in the per-point table."
        )
    if cpus["shared"]:
        return (
            f"Load and target share the {len(cpus['target'])} CPUs (no split: cpus.split is off, "
            "or fewer than 4 usable CPUs), so they take CPU from each other; each point's "
            "verdict says what limited it."
        )
    return (
        f"Load pinned to CPUs {cpus['load']}, target (primary and workers) to CPUs "
        f"{cpus['target']}: the target's available_parallelism() is {len(cpus['target'])}."
    )


def _summary(analysis: Analysis) -> list[Block]:
    table = tables.summary_table(analysis.aggregates)
    if table.empty:
        return [Block("h2", "Summary"), Block("p", "No point finished.")]
    return [Block("h2", "Summary"), Block("table", table=table), *_summary_notes(analysis)]


def _open_model_note(analysis: Analysis) -> str:
    measured = analysis.measured
    late, arrivals = measured["late_arrivals"].sum(), measured["arrivals"].sum()
    sent = "; ".join(
        f"{r['workload']} · {r['policy']} · {r['workers']}: p99 {r['p99_ms']:.2f} ms from the "
        f"intended send, {r['p99_sent_ms']:.2f} ms from the actual send"
        for r in measured.to_dict("records")
        if r.get("p99_sent_ms") == r.get("p99_sent_ms")
    )
    return (
        "Open model: latency counts from each request's intended send time, so a stall shows "
        f"in the tail (coordinated omission corrected); {late:.0f} of {arrivals:.0f} arrivals "
        f"were sent late, their user still waiting for an earlier answer. {sent}."
    )


#: wrk's latency figures are not the answers' own times (wrk.c: stats_correct before its report
#: and the Lua done()); Debian's wrk gives its Lua script no buckets to undo it with.
WRK_LATENCY_NOTE = (
    "wrk's latency figures are corrected for coordinated omission by wrk itself: each answer "
    "slower than twice the mean time per connection adds synthetic samples below it, so wrk's "
    "mean and percentiles sit above the answers' own times when the tail is long (Little's law "
    "is not checked against them); for the answers' own latency use the locust engine."
)


def _summary_notes(analysis: Analysis) -> list[Block]:
    """What the summary's figures can and cannot say: spread, sample counts, the model."""
    aggregates, load = analysis.aggregates, analysis.scenario["load"]
    notes = ["Figures are medians over repeats, [min–max] beside them."]
    if aggregates["repeats"].max() < 2:
        notes = ["One repeat per point: differences between rows are not tested."]
    if aggregates["low_confidence_p99"].any():
        notes.append(
            "* p99 rests on fewer than 10 samples beyond it: a guess, not a measurement "
            "(measure longer)."
        )
    if load.get("model") == "open":
        notes.append(_open_model_note(analysis))
    if load.get("model", "closed") == "closed":
        notes.append(
            "Closed model: each client waits for its answer before sending again, so latency "
            "includes queueing behind the clients' own requests, and a stall slows the senders "
            "instead of showing in the tail."
        )
    if (analysis.measured["engine"] == "wrk").any():
        notes.append(WRK_LATENCY_NOTE)
    return [Block("p", " ".join(notes))]


def _verdicts(analysis: Analysis) -> list[Block]:
    measured = analysis.measured
    heading = Block("h2", "What limited each point")
    if measured.empty:
        return []
    counts = measured["verdict"].value_counts()
    tally = ", ".join(f"{counts[v]} {verdict_label(v)}" for v in VERDICT_ORDER if v in counts)
    blocks = [heading, Block("p", f"{tally} (of {len(measured)} measured). {VERDICT_HELP}")]
    others = measured[measured["verdict"] != "target"]
    if not others.empty:
        items = "; ".join(
            f"{r['workload']} · {r['policy']} · {r['workers']} workers (repeat "
            f"{r['repeat'] + 1}): {verdict_label(r['verdict'])}, {r['verdict_reason']}"
            for r in others.to_dict("records")
        )
        blocks.append(
            Block(
                "p",
                f"{items}. These rates are not the target's capacity; {LIFT_LIMITS}",
                lead="Not target-bound:",
            )
        )
    return blocks


def _conclusions(analysis: Analysis) -> list[Block]:
    heading = Block("h2", "Conclusions")
    measured = analysis.measured
    if measured.empty:
        return []
    aggregates = analysis.aggregates
    bound = aggregates[aggregates["target_bound"].astype(bool)]
    if bound.empty:
        return [
            heading,
            Block(
                "p",
                "None drawn: no group of points was target-bound in every repeat, so no "
                "number here is the target's capacity (which policy is faster, whether more "
                f"workers pay). {LIFT_LIMITS}",
            ),
        ]
    lines = [*conclusions.policy_lines(bound), *conclusions.worker_lines(bound)]
    untested = (
        " With 1 repeat per point the differences are not tested."
        if (aggregates["repeats"].max() < 2)
        else ""
    )
    return [
        heading,
        Block(
            "p",
            "From target-bound groups only (every repeat target-bound); a group whose repeats' "
            f"ranges overlap another's is called a tie.{untested}",
        ),
        *[Block("p", line) for line in lines],
    ]


def _noisy(analysis: Analysis) -> list[Block]:
    points = analysis.points
    noisy = points[points["other_cpu_pct"] > NOISY_OTHER_CPU] if not points.empty else points
    if noisy.empty:
        return []
    listed = ", ".join(str(int(p) + 1) for p in noisy["point"])
    return [
        Block(
            "p",
            f"in points {listed} processes outside this run used more than "
            f"{NOISY_OTHER_CPU:g}% of a core (column 'other CPU %'); treat those numbers with "
            "care or run again on a quiet machine.",
            lead="Noisy machine:",
        )
    ]


def _load_lost(analysis: Analysis) -> list[Block]:
    """Points where a load worker vanished mid-window (results.csv's ``load_lost``): their load
    was less than asked from that moment."""
    points = analysis.points
    if points.empty or "load_lost" not in points:
        return []
    lost = points[points["load_lost"].fillna("").astype(str) != ""]
    if lost.empty:
        return []
    listed = "; ".join(f"point {int(p['point']) + 1}: {p['load_lost']}" for _, p in lost.iterrows())
    return [
        Block(
            "p",
            f"{listed}. Each such point sent less load than asked from that moment (columns "
            "'load_workers_lost' and 'load_lost' of results.csv).",
            lead="Load workers lost mid-window:",
        )
    ]


def _scalability(analysis: Analysis) -> list[Block]:
    heading = Block("h2", "Scalability (USL)")
    capped = capacity_report.usl_blocks(analysis, Block)
    if analysis.fits.empty and capped:
        return [heading, *capped]
    if analysis.fits.empty:
        points = analysis.points
        counts = points["workers"].nunique() if not points.empty else 0
        return [
            heading,
            Block(
                "p",
                "No fit: needs at least 3 worker counts whose points are target-bound (this "
                f"run has {counts} worker counts).",
            ),
        ]
    uncapped = Block("table", table=tables.fit_table(analysis.fits))
    if not capped:
        return [heading, uncapped]
    note = (
        "Without the CPU cap or intervals (the fit earlier reports gave): past one worker per "
        "CPU a flat line reads as coherency cost here."
    )
    return [heading, *capped, Block("p", note), uncapped]


def _every_point(analysis: Analysis) -> list[Block]:
    blocks = [Block("h2", "Every point"), Block("table", table=tables.point_table(analysis.points))]
    failures = analysis.run.failures
    if not failures.empty:
        by_kind = (
            failures.groupby(["workload", "policy", "workers", "error"])["occurrences"]
            .sum()
            .reset_index()
        )
        blocks += [Block("h2", "Failures by kind"), Block("table", table=by_kind)]
    blocks.append(
        Block(
            "p",
            "Tables: results.csv, workers.csv, timeseries.csv, events.csv, failures.csv; "
            f"summary.json (schema clusterlab.lab.summary v{SUMMARY_VERSION}). Rebuild with "
            "`clusterlab report DIR`.",
        )
    )
    return blocks


def _recovery(analysis: Analysis) -> list[Block]:
    scenario, per_point = analysis.scenario, analysis.recovery
    streams = "; ".join(tables.describe_fault(f) for f in scenario["faults"])
    blocks = [
        Block("h2", "Recovery"),
        Block("p", f"Faults: {streams}. Supervision: {_supervision(scenario.get('respawn'))}."),
    ]
    if per_point.empty:
        return [*blocks, Block("p", "No point with faults finished.")]
    blocks += [
        Block("table", table=tables.recovery_table(per_point)),
        Block("p", RECOVERY_HELP),
    ]
    lost = per_point["rr_dropped"].dropna()
    if (lost > 0).any():
        blocks.append(
            Block(
                "p",
                f"{lost.sum():.0f} queued connections were closed unserved under rr (every "
                "worker had gone at once).",
                lead="Connections lost at the primary:",
            )
        )
    return [
        *blocks,
        Block("h2", "Every fault"),
        Block("table", table=tables.fault_table(analysis.faults)),
    ]


def _supervision(respawn: dict[str, Any] | None) -> str:
    if not respawn:
        return "no restarts (no [respawn] table)"
    text = f"respawn {respawn['policy']}"
    if respawn["policy"] == "backoff":
        text += f" (base {respawn['base']:g} s, cap {respawn['cap']:g} s)"
    text += f", restart limit {respawn['max_restarts']} within {respawn['within']:g} s"
    beat = respawn.get("heartbeat")
    if beat:
        return text + f", heartbeat every {beat['interval']:g} s (timeout {beat['timeout']:g} s)"
    return text + ", no heartbeat"
