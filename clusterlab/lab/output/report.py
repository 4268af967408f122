"""Write a run's outputs from its ``Analysis``: the plots, summary.json, report.md and a
self-contained report.html (Jinja2, autoescaped, plots embedded). The content is assembled once
as blocks (``sections``), then rendered twice.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape

from clusterlab.lab.analysis.analysis import Analysis, analyze
from clusterlab.lab.analysis.capacity import busiest_levels
from clusterlab.lab.analysis.tables import load_results
from clusterlab.lab.output import plots, policies
from clusterlab.lab.output.sections import Block, report_blocks
from clusterlab.lab.output.text import markdown_table

_TEMPLATES = Environment(
    loader=PackageLoader("clusterlab.lab.output", "templates"),
    autoescape=select_autoescape(["html", "j2"]),
    keep_trailing_newline=True,
)


def build_report(directory: str | Path) -> Path:
    """(Re)build every output of a run from its tables alone; return report.md's path."""
    return write_outputs(analyze(load_results(directory)))


def write_outputs(analysis: Analysis) -> Path:
    """Draw the plots, write summary.json, report.md and report.html; return report.md's path."""
    directory = analysis.directory
    drawn = draw_plots(analysis)
    summary = {**analysis.summary, "plots": drawn}
    (directory / "summary.json").write_text(json.dumps(summary, indent=2))
    blocks = report_blocks(analysis, drawn)
    (directory / "report.md").write_text(render_markdown(blocks))
    (directory / "report.html").write_text(render_html(blocks, directory))
    return directory / "report.md"


def draw_plots(analysis: Analysis) -> dict[str, str]:
    """The scenario's plots that have something to show, as {name: file name}."""
    run, capacity = analysis.run, analysis.capacity
    # with load levels, the worker-count figures show each count at its busiest level
    points = busiest_levels(analysis.points)
    makers: dict[str, Callable[[Path], Path | None]] = {
        "throughput": lambda p: plots.throughput(points, analysis.parallelism, p),
        "fairness": lambda p: plots.fairness(points, p),
        "latency": lambda p: plots.latency(points, p),
        "share": lambda p: plots.share(points, run.workers, p),
        "usl": lambda p: plots.usl_plot(points, analysis.fits, p),
        "timeline": lambda p: plots.timeline(
            points, run.timeseries, run.events, analysis.faults, p
        ),
        "hockey": lambda p: plots.hockey_stick(
            analysis.points, capacity.knees if capacity else pd.DataFrame(), p
        ),
        "efficiency": lambda p: plots.efficiency_plot(capacity.efficiency, p) if capacity else None,
        "policies": lambda p: policies.plot(analysis, p),
    }
    # Against a url target there is no worker sweep: only the per-worker share applies.
    no_sweep = points.empty or bool((points["workers"] == 0).all())
    drawn = {}
    for name in analysis.scenario["report"]["plots"]:
        path = analysis.directory / f"{name}.png"
        path.unlink(missing_ok=True)
        if points.empty or (no_sweep and name != "share"):
            continue
        made = makers[name](path)
        if made is not None:
            drawn[name] = made.name
    return drawn


def render_markdown(blocks: list[Block]) -> str:
    out = []
    for block in blocks:
        if block.kind == "h1":
            out.append(f"# {block.text}")
        elif block.kind == "h2":
            out.append(f"## {block.text}")
        elif block.kind == "p":
            out.append(f"**{block.lead}** {block.text}" if block.lead else block.text)
        elif block.kind == "table" and block.table is not None:
            out.append(markdown_table(block.table))
        elif block.kind == "image":
            out.append(f"![{block.text}]({block.text})\n\n{block.caption}")
    return "\n\n".join(out) + "\n"


def render_html(blocks: list[Block], directory: Path) -> str:
    """One self-contained page: plots embedded as base64 PNG, no external resources."""
    images = {
        b.text: base64.b64encode((directory / b.text).read_bytes()).decode()
        for b in blocks
        if b.kind == "image"
    }
    tables = {
        id(b): b.table.to_html(index=False, border=0, classes="t", na_rep="–")
        for b in blocks
        if b.kind == "table" and b.table is not None
    }
    title = blocks[0].text if blocks else "clusterlab report"
    template = _TEMPLATES.get_template("report.html.j2")
    return template.render(title=title, blocks=blocks, images=images, tables=tables, id=id)
