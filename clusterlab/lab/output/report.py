"""Build a run's report from its tables alone: metrics (and recovery metrics, for runs with
faults) → summary.json → plots → report.md and a self-contained report.html. The content is
assembled once as blocks, then rendered twice.
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from clusterlab.lab.analysis import recovery
from clusterlab.lab.analysis.metrics import aggregate, fairness_columns, usl_fits
from clusterlab.lab.analysis.tables import POINT_KEYS, Results, load_results
from clusterlab.lab.output import plots

SUMMARY_SCHEMA = "clusterlab.lab.summary"
NOISY_OTHER_CPU = 25.0
SUMMARY_VERSION = 2
PLOT_HELP = {
    "throughput": "Successful requests/s against worker count, one line per policy (median over "
    "repeats, band = min–max). Dashed: ideal linear scaling from the smallest count; dotted: "
    "available_parallelism(). Where the line bends away from the dashed one, adding workers stops "
    "paying. Hollow markers are generator-bound: locust, not the cluster, was the limit.",
    "fairness": "Jain's index of per-worker requests (solid) and connections (dashed): 1 = every "
    "worker got the same, 1/n (dotted) = one worker got everything.",
    "latency": "p99 latency against worker count per policy. Rising p99 with more workers than "
    "CPUs shows oversubscription; a gap between policies shows queueing in the primary or uneven "
    "accept.",
    "share": "Each worker's share of the requests at the largest worker count, sorted; the dashed "
    "line is the fair share 1/n. A tall first bar is a hot worker.",
    "usl": "Measured throughput (points) and the Universal Scalability Law fit (line). σ is "
    "contention (serial work), κ coherency cost (crosstalk); N* is the predicted peak.",
    "timeline": "Each point with faults over time, one column per policy: successful requests/s "
    "(100 ms bins, faint; 0.5 s mean, solid) and failed requests/s (red bars, right axis). Red "
    "line: a fault takes effect (a signal at once; an armed exception or hang when a request "
    "fires it); purple dotted: the heartbeat timeout caught a hang; green dashed: the "
    "replacement listens; green dot: throughput back to 90 % of its pre-crash level; thick "
    "black: the restart limit was reached (no more restarts). Warm-up is shaded.",
}
RECOVERY_HELP = (
    "Per point: faults injected (and skipped: no ready worker, or the load had ended), those that "
    "took effect, crashes (the worker exited) and how many of them were replaced; seconds from "
    "the fault taking effect to the replacement's 'listening' and to throughput back at 90 % of "
    "its pre-crash level (median / max); failed requests while recovering, by cause; under rr "
    "the connections the primary re-queued from a dying worker and those it lost (closed "
    "unserved: must be 0); restarts scheduled and refused by the restart limit. Method: "
    "throughput is locust's successful requests in 100 ms bins; the pre-crash level is their "
    "mean over the 2 s before the fault; it is back once a 0.5 s span has a mean of at "
    "least 90 % of that (the time is that span's start; 0 = it never fell that low; – = not "
    "back before the next fault or the end). A fault's failures are those in the bins from it "
    "to the next fault's effect (or the end of measurement)."
)


@dataclass(frozen=True)
class Block:
    """One piece of report content: ('h1'|'h2'|'p'|'table'|'image', payload)."""

    kind: str
    payload: Any


def build_report(directory: str | Path) -> Path:
    """(Re)build summary.json, the plots, report.md and report.html; return report.md's path."""
    data = load_results(directory)
    results = refresh_fairness(data.results, data.workers)
    aggregates = aggregate(results) if not results.empty else pd.DataFrame()
    fits = usl_fits(results) if not results.empty else pd.DataFrame()
    per_fault = recovery.faults(data.events, data.timeseries, results)
    per_point = recovery.points(data.events, per_fault, results)
    parallelism = int(data.meta["machine"]["available_parallelism"])
    drawn = _draw(data, results, fits, per_fault, parallelism)
    summary = summary_dict(data, results, aggregates, fits, drawn, per_fault, per_point)
    (data.directory / "summary.json").write_text(json.dumps(summary, indent=2))
    blocks = _blocks(data, results, aggregates, fits, drawn, per_fault, per_point)
    (data.directory / "report.md").write_text(render_markdown(blocks))
    (data.directory / "report.html").write_text(render_html(blocks, data.directory))
    return data.directory / "report.md"


def refresh_fairness(results: pd.DataFrame, workers: pd.DataFrame) -> pd.DataFrame:
    """Fairness columns recomputed from workers.csv, so the report depends on the raw counts."""
    out = results.copy()
    if out.empty or workers.empty:
        return out
    for (point, repeat), group in workers.groupby(["point", "repeat"]):
        rows = (out["point"] == point) & (out["repeat"] == repeat)
        for column, value in fairness_columns(group.to_dict("records")).items():
            out.loc[rows, column] = value
    return out


def _draw(
    data: Results,
    results: pd.DataFrame,
    fits: pd.DataFrame,
    per_fault: pd.DataFrame,
    parallelism: int,
) -> dict[str, str]:
    wanted = data.meta["scenario"]["report"]["plots"]
    makers = {
        "throughput": lambda p: plots.throughput(results, parallelism, p),
        "fairness": lambda p: plots.fairness(results, p),
        "latency": lambda p: plots.latency(results, p),
        "share": lambda p: plots.share(results, data.workers, p),
        "usl": lambda p: plots.usl_plot(results, fits, p),
        "timeline": lambda p: plots.timeline(results, data.timeseries, data.events, per_fault, p),
    }
    # Against a url target there is no worker sweep: only the per-worker share applies.
    no_sweep = results.empty or bool((results["workers"] == 0).all())
    drawn = {}
    for name in wanted:
        path = data.directory / f"{name}.png"
        path.unlink(missing_ok=True)
        if results.empty or (no_sweep and name != "share"):
            continue
        made = makers[name](path)
        if made is not None:
            drawn[name] = made.name
    return drawn


def _clean(value: Any) -> Any:
    """JSON-ready: NaN → None, numpy scalars → Python."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _handoffs(row: dict[str, Any]) -> dict[str, Any] | None:
    counts = {n: row.get(f"rr_{n}") for n in ("accepted", "handed", "requeued", "dropped")}
    if all(v is None or (isinstance(v, float) and math.isnan(v)) for v in counts.values()):
        return None
    return counts


def summary_dict(
    data: Results,
    results: pd.DataFrame,
    aggregates: pd.DataFrame,
    fits: pd.DataFrame,
    drawn: dict[str, str],
    per_fault: pd.DataFrame,
    per_point: pd.DataFrame,
) -> dict[str, Any]:
    """The versioned summary (schema: summary.schema.json), the input of later comparisons."""
    meta = data.meta
    points = []
    for row in results.to_dict("records"):
        points.append(
            {
                **{k: row[k] for k in POINT_KEYS},
                "status": row["status"],
                "error": row.get("error") or None,
                **{
                    k: row.get(k)
                    for k in (
                        "window_s",
                        "requests",
                        "failures",
                        "rps",
                        "fail_rps",
                        "failure_ratio",
                        "p50_ms",
                        "p90_ms",
                        "p99_ms",
                        "p999_ms",
                        "max_ms",
                    )
                },
                "fairness": {
                    q: {m: row.get(f"{m}_{q}") for m in ("jain", "cv", "max_mean")}
                    for q in ("requests", "connections")
                },
                "cpu_pct": {
                    "primary": row.get("primary_cpu_pct"),
                    "workers": row.get("workers_cpu_pct"),
                    "generator": row.get("gen_cpu_pct"),
                    "generator_max": row.get("gen_cpu_max_pct"),
                    "machine": row.get("machine_cpu_pct"),
                    "other": row.get("other_cpu_pct"),
                },
                "generator_bound": bool(row.get("generator_bound")),
                "bound_reason": row.get("bound_reason") or None,
                "rr": _handoffs(row),
            }
        )
    ok = results[results["status"] == "ok"] if not results.empty else results
    return _clean(
        {
            "schema": SUMMARY_SCHEMA,
            "schema_version": SUMMARY_VERSION,
            "scenario": meta["scenario"],
            "machine": meta["machine"],
            "run": {
                "started": meta["started"],
                "finished": meta["finished"],
                "partial": bool(meta["partial"]),
                "interrupted": bool(meta["interrupted"]),
                "planned_points": meta["planned_points"],
                "measured_points": len(ok),
                "failed_points": int((results["status"] != "ok").sum()) if not results.empty else 0,
            },
            "points": points,
            "aggregates": aggregates.to_dict("records"),
            "usl": fits.to_dict("records"),
            "recovery": {
                "method": {
                    "bin_s": 0.1,
                    "pre_window_s": recovery.PRE_WINDOW_S,
                    "span_s": recovery.SPAN_S,
                    "recovered_fraction": recovery.RECOVERED,
                },
                "points": per_point.to_dict("records"),
                "faults": per_fault.to_dict("records"),
            },
            "plots": drawn,
        }
    )


# --- content ---------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def summary_table(aggregates: pd.DataFrame) -> pd.DataFrame:
    """The closing table: one row per workload × policy × workers."""
    if aggregates.empty:
        return pd.DataFrame()
    rows = []
    for r in aggregates.to_dict("records"):
        spread = f" [{_fmt(r['rps_min'], 0)}–{_fmt(r['rps_max'], 0)}]" if r["repeats"] > 1 else ""
        rows.append(
            {
                "workload": r["workload"],
                "policy": r["policy"],
                "workers": r["workers"],
                "req/s": _fmt(r["rps"], 0) + spread,
                "p50 ms": _fmt(r["p50_ms"]),
                "p99 ms": _fmt(r["p99_ms"]),
                "fail %": _fmt(100 * r["failure_ratio"], 2),
                "Jain req": _fmt(r["jain_requests"], 3),
                "Jain conn": _fmt(r["jain_connections"], 3),
                "note": "generator-bound" if r["generator_bound"] else "",
            }
        )
    return pd.DataFrame(rows)


def _blocks(
    data: Results,
    results: pd.DataFrame,
    aggregates: pd.DataFrame,
    fits: pd.DataFrame,
    drawn: dict[str, str],
    per_fault: pd.DataFrame,
    per_point: pd.DataFrame,
) -> list[Block]:
    meta, scenario, machine = data.meta, data.meta["scenario"], data.meta["machine"]
    load = scenario["load"]
    blocks = [Block("h1", f"clusterlab lab report: {scenario['name']}")]
    if meta["partial"]:
        why = "interrupted" if meta["interrupted"] else "not every point finished"
        blocks.append(
            Block(
                "p",
                f"**PARTIAL REPORT** ({why}): {len(results)} of "
                f"{meta['planned_points']} points measured.",
            )
        )
    if scenario.get("description"):
        blocks.append(Block("p", scenario["description"]))
    processes = sorted(int(p) for p in results["processes"].dropna().unique())
    blocks.append(
        Block(
            "p",
            f"Machine: {machine['cpu_model']}; available_parallelism() = "
            f"{machine['available_parallelism']} (affinity {machine['affinity']}), "
            f"{machine['memory_gb']} GB; Python {machine['python']}; git {machine['git_revision']}. "
            f"Target: {scenario['target']['kind']}. Load: locust, {load['users']} users, "
            f"{load['model']} model, {load['connection']} connections, {load['warmup']:g} s warm-up "
            f"then {load['duration']:g} s measured, locust processes per point {processes or load['processes']}. "
            "The load generator and the cluster share this machine's CPUs (no pinning); the CPU each "
            "side used is in the per-point table.",
        )
    )
    blocks.append(Block("h2", "Summary"))
    table = summary_table(aggregates)
    blocks.append(Block("table", table) if not table.empty else Block("p", "No point finished."))
    if scenario.get("faults"):
        blocks += _recovery_blocks(scenario, per_fault, per_point)
    bound = results[results["generator_bound"].astype(bool)] if not results.empty else results
    blocks.append(Block("h2", "Generator-bound points"))
    if bound.empty:
        blocks.append(
            Block(
                "p",
                "None: in every point each locust process stayed below "
                f"{load['generator_bound_cpu']:g}% of a core.",
            )
        )
    else:
        items = "; ".join(
            f"{r['workload']} · {r['policy']} · {r['workers']} workers (repeat {r['repeat'] + 1}): "
            f"{r['bound_reason']}"
            for r in bound.to_dict("records")
        )
        blocks.append(
            Block(
                "p",
                f"{items}. These numbers are the generator's limit, not the "
                "cluster's capacity; raise load.processes (more locust processes) "
                "or move load to another machine to measure the cluster.",
            )
        )
    noisy = results[results["other_cpu_pct"] > NOISY_OTHER_CPU] if not results.empty else results
    if not noisy.empty:
        points = ", ".join(str(int(p) + 1) for p in noisy["point"])
        blocks.append(
            Block(
                "p",
                f"**Noisy machine:** in points {points} processes outside this run "
                f"used more than {NOISY_OTHER_CPU:g}% of a core (column 'other CPU "
                "%'); treat those numbers with care or run again on a quiet machine.",
            )
        )
    blocks.append(Block("h2", "Scalability (USL)"))
    if fits.empty:
        counts = results["workers"].nunique() if not results.empty else 0
        blocks.append(
            Block(
                "p",
                f"No fit: needs at least 3 worker counts that are not "
                f"generator-bound (this run has {counts} worker counts).",
            )
        )
    else:
        fit_table = pd.DataFrame(
            [
                {
                    "workload": f["workload"],
                    "policy": f["policy"],
                    "λ (req/s per worker)": _fmt(f["lam"], 0),
                    "σ": _fmt(f["sigma"], 4),
                    "κ": _fmt(f["kappa"], 5),
                    "R²": _fmt(f["r2"], 3),
                    "N*": _fmt(f["peak_workers"], 1),
                    "X(N*) req/s": _fmt(f["peak_rps"], 0),
                }
                for f in fits.to_dict("records")
            ]
        )
        blocks.append(Block("table", fit_table))
    blocks.append(Block("h2", "Plots"))
    for name, file in drawn.items():
        blocks.append(Block("image", (file, PLOT_HELP[name])))
    blocks.append(Block("h2", "Every point"))
    blocks.append(Block("table", _point_table(results)))
    failures = data.failures
    if not failures.empty:
        blocks.append(Block("h2", "Failures by kind"))
        blocks.append(
            Block(
                "table",
                failures.groupby(["workload", "policy", "workers", "error"])["occurrences"]
                .sum()
                .reset_index(),
            )
        )
    blocks.append(
        Block(
            "p",
            "Tables: results.csv, workers.csv, timeseries.csv, events.csv, "
            f"failures.csv; summary.json (schema clusterlab.lab.summary v{SUMMARY_VERSION}). "
            "Rebuild with `clusterlab report DIR`.",
        )
    )
    return blocks


def _recovery_blocks(
    scenario: dict[str, Any], per_fault: pd.DataFrame, per_point: pd.DataFrame
) -> list[Block]:
    blocks = [Block("h2", "Recovery")]
    respawn = scenario.get("respawn")
    policy = (
        "no restarts (no [respawn] table)"
        if not respawn
        else f"respawn {respawn['policy']}"
        + (
            f" (base {respawn['base']:g} s, cap {respawn['cap']:g} s)"
            if respawn["policy"] == "backoff"
            else ""
        )
        + f", restart limit {respawn['max_restarts']} within {respawn['within']:g} s"
        + (
            f", heartbeat every {respawn['heartbeat']['interval']:g} s "
            f"(timeout {respawn['heartbeat']['timeout']:g} s)"
            if respawn.get("heartbeat")
            else ", no heartbeat"
        )
    )
    streams = "; ".join(_describe_fault(f) for f in scenario["faults"])
    blocks.append(Block("p", f"Faults: {streams}. Supervision: {policy}."))
    if per_point.empty:
        blocks.append(Block("p", "No point with faults finished."))
        return blocks
    blocks.append(Block("table", recovery_table(per_point)))
    blocks.append(Block("p", RECOVERY_HELP))
    lost = per_point["rr_dropped"].dropna()
    if (lost > 0).any():
        blocks.append(
            Block(
                "p",
                f"**Connections lost at the primary:** {lost.sum():.0f} queued connections were "
                "closed unserved under rr (every worker had gone at once).",
            )
        )
    blocks.append(Block("h2", "Every fault"))
    blocks.append(Block("table", fault_table(per_fault)))
    return blocks


def _describe_fault(fault: dict[str, Any]) -> str:
    kind = {
        "exit": f"exit {fault['code']}",
        "exception": "exception" + (" (fatal)" if fault["fatal"] else " (answered 500)"),
        "hang": "hang" + (" in a handler" if fault["hang"] == "handler" else " (SIGSTOP)"),
    }.get(fault["kind"], fault["kind"].upper())
    if fault["every"] is not None:
        start = fault["every"] if fault["start"] is None else fault["start"]
        when = f"every {fault['every']:g} s from {start:g} s"
    else:
        when = f"at random, {fault['rate']:g}/s (seed {fault['seed']})"
    stop = f" until {fault['stop']:g} s" if fault["stop"] is not None else ""
    return f"{kind} to the {fault['target']} worker {when}{stop}"


def _pair(a: Any, b: Any, digits: int = 2) -> str:
    return f"{_fmt(a, digits)} / {_fmt(b, digits)}"


def _causes(row: dict[str, Any]) -> str:
    found = [f"{c} {row[f'fail_{c}']:.0f}" for c in recovery.CAUSES if row.get(f"fail_{c}")]
    return ", ".join(found) or "–"


def recovery_table(per_point: pd.DataFrame) -> pd.DataFrame:
    """The report's recovery table: one row per point with faults."""
    rows = []
    for r in per_point.to_dict("records"):
        rows.append(
            {
                "workload": r["workload"],
                "policy": r["policy"],
                "workers": r["workers"],
                "rep": r["repeat"] + 1,
                "faults (skipped)": f"{r['faults']} ({r['skipped']})",
                "crashes": r["crashes"],
                "replaced": r["replaced"],
                "to listening s (med / max)": _pair(
                    r["to_listening_median_s"], r["to_listening_max_s"]
                ),
                "back to 90 %": f"{r['recovered']} of {r['took_effect']}",
                "to 90 % s (med / max)": _pair(r["to_recover_median_s"], r["to_recover_max_s"]),
                "failed req (per fault med)": f"{r['failures']:.0f} ({_fmt(r['failures_per_fault_median'], 0)})",
                "by cause": _causes(r),
                "rr requeued / lost": _pair(r["rr_requeued"], r["rr_dropped"], 0),
                "restarts (refused)": f"{r['restarts']} ({r['refused']})"
                + (" limit" if r["limit_reached"] else ""),
            }
        )
    return pd.DataFrame(rows)


def fault_table(per_fault: pd.DataFrame) -> pd.DataFrame:
    """Every injected fault: when it acted, what it did, how long recovery took."""
    rows = []
    for r in per_fault.to_dict("records"):
        rows.append(
            {
                "policy": r["policy"],
                "point": r["point"] + 1,
                "fault": r["fault"],
                "t s": _fmt(r["t_effect"], 2) if math.isfinite(r["t_effect"]) else "never fired",
                "kind": r["how"] if r["how"] in ("SIGKILL", "SIGTERM", "SIGSTOP") else r["kind"],
                "worker (slot)": f"{r['worker']} ({_fmt(r['slot'], 0)})",
                "exit": r["exit_kind"] or "–",
                "hang detected s": _fmt(r["t_hang_detected"] - r["t_effect"], 2),
                "replacement": r["replacement"] or "–",
                "to listening s": _fmt(r["to_listening_s"], 2),
                "pre-crash req/s": _fmt(r["pre_rps"], 0),
                "to 90 % s": _fmt(r["to_recover_s"], 2),
                "failed req": _fmt(r["failures"], 0),
                "by cause": _causes(r),
            }
        )
    return pd.DataFrame(rows)


def _point_table(results: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for r in results.to_dict("records"):
        rows.append(
            {
                "#": r["point"] + 1,
                "rep": r["repeat"] + 1,
                "workload": r["workload"],
                "policy": r["policy"],
                "workers": r["workers"],
                "status": r["status"],
                "req/s": _fmt(r.get("rps"), 0),
                "p99 ms": _fmt(r.get("p99_ms")),
                "Jain req": _fmt(r.get("jain_requests"), 3),
                "max/mean req": _fmt(r.get("max_mean_requests"), 2),
                "Jain conn": _fmt(r.get("jain_connections"), 3),
                "workers CPU %": _fmt(r.get("workers_cpu_pct"), 0),
                "primary CPU %": _fmt(r.get("primary_cpu_pct"), 0),
                "locust CPU % (max proc)": f"{_fmt(r.get('gen_cpu_pct'), 0)} ({_fmt(r.get('gen_cpu_max_pct'), 0)})",
                "other CPU %": _fmt(r.get("other_cpu_pct"), 0),
                "note": "generator-bound" if r.get("generator_bound") else (r.get("error") or ""),
            }
        )
    return pd.DataFrame(rows)


# --- rendering -------------------------------------------------------------------------------


def markdown_table(frame: pd.DataFrame) -> str:
    header = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in frame.itertuples(index=False):
        cells = [str(_fmt(v) if isinstance(v, float) else v).replace("|", "\\|") for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_markdown(blocks: list[Block]) -> str:
    out = []
    for block in blocks:
        if block.kind == "h1":
            out.append(f"# {block.payload}")
        elif block.kind == "h2":
            out.append(f"## {block.payload}")
        elif block.kind == "p":
            out.append(block.payload)
        elif block.kind == "table":
            out.append(markdown_table(block.payload))
        elif block.kind == "image":
            file, help_text = block.payload
            out.append(f"![{file}]({file})\n\n{help_text}")
    return "\n\n".join(out) + "\n"


def render_html(blocks: list[Block], directory: Path) -> str:
    """One self-contained page: plots embedded as base64 PNG, no external resources."""
    body = []
    for block in blocks:
        if block.kind in ("h1", "h2"):
            body.append(f"<{block.kind}>{html.escape(block.payload)}</{block.kind}>")
        elif block.kind == "p":
            text = html.escape(block.payload)
            text = text.replace("**", "") if text.count("**") % 2 else text
            parts = text.split("**")
            text = "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(parts))
            body.append(f"<p>{text}</p>")
        elif block.kind == "table":
            body.append(block.payload.to_html(index=False, border=0, classes="t", na_rep="–"))
        elif block.kind == "image":
            file, help_text = block.payload
            data = base64.b64encode((directory / file).read_bytes()).decode()
            body.append(
                f'<figure><img alt="{html.escape(file)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(help_text)}</figcaption></figure>"
            )
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
        "table.t{border-collapse:collapse;font-size:13px}"
        "table.t td,table.t th{border-bottom:1px solid #ddd;padding:3px 8px;text-align:right}"
        "img{max-width:100%}figcaption{font-size:13px;color:#444}"
    )
    title = html.escape(blocks[0].payload) if blocks else "clusterlab report"
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n"
    )
