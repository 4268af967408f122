"""CI outputs of a comparison and of gate checks: terminal table, Markdown (a CI job summary or PR
comment), JUnit XML (one test case per compared metric and per gate) and JSON."""

from __future__ import annotations

import json
import math
import statistics
from typing import Any
from xml.etree import ElementTree as ET

import pandas as pd

from clusterlab.lab.ci.compare import RESAMPLES, SEED, Comparison, Row, repeats_text
from clusterlab.lab.ci.gates import GateResult
from clusterlab.lab.config.gates import GROUP_KEYS
from clusterlab.lab.output.text import markdown_table, plain_table

MARKS = {
    "worse": "+",
    "better": "-",
    "unchanged": " ",
    "inconclusive": "?",
    "untrusted": "!",
    "not comparable": "x",
}
SOURCES = {"default": "", "calibrated": " cal", "capped": " cap", "--threshold": " set"}
LEGEND = (
    "`+` worse, `-` better, `?` inconclusive (interval across the threshold), `!` untrusted "
    "points, `x` not comparable, ↑ higher is better; threshold `cal` calibrated, `cap` "
    "calibrated above the default and capped at it, `set` by --threshold"
)


def _num(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "–" if value is None or math.isnan(value) else "∞"
    return f"{value:,.3g}" if abs(value) < 10 else f"{value:,.0f}"


def _spread(values: list[float]) -> str:
    """``median (min–max)`` of the repeats."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "–"
    if len(finite) == 1:
        return _num(finite[0])
    return f"{_num(statistics.median(finite))} ({_num(min(finite))}–{_num(max(finite))})"


def _ratio(value: float | None) -> str:
    if value is None:
        return "–"
    return "∞" if math.isinf(value) else f"{value:.3f}"


def _interval(row: Row) -> str:
    return "–" if row.interval is None else f"{_ratio(row.interval[0])}–{_ratio(row.interval[1])}"


def _cells(row: Row) -> list[str]:
    verdict = row.verdict.upper() if row.regressed else row.verdict
    note = row.note or ("" if row.gating else "information only")
    return [
        MARKS[row.verdict],
        row.metric + ("" if row.direction < 0 else " ↑"),
        row.name,
        _spread(row.baseline),
        _spread(row.current),
        _ratio(row.ratio),
        _interval(row),
        "–" if row.p_value is None else f"{row.p_value:.3g}",
        f"{row.threshold:.1%}{SOURCES.get(row.threshold_source, '')}".replace("%", " %"),
        verdict,
        note,
    ]


def headers(comparison: Comparison) -> list[str]:
    return [
        "",
        "metric",
        "workload/policy/workers",
        "baseline",
        "current",
        "ratio",
        f"{level(comparison.confidence)} interval",
        "p",
        "threshold",
        "verdict",
        "note",
    ]


def level(confidence: float) -> str:
    """``95 %``, ``99.9 %``: the interval's level as printed."""
    return f"{confidence * 100:.2f}".rstrip("0").rstrip(".") + " %"


def _names(rows: list[Row], most: int = 6) -> str:
    names = ", ".join(f"{r.metric} {r.name}" for r in rows[:most])
    return names + (f" and {len(rows) - most} more" if len(rows) > most else "")


def inconclusive_line(comparison: Comparison) -> str:
    """One line: the gated rows that could not be judged, grouped by why."""
    undecided = comparison.undecided
    if not comparison.gated:
        return "nothing gated was compared (no rows, or none that gate between these machines)"
    by_reason: dict[str, list[Row]] = {}
    for row in undecided:
        by_reason.setdefault(row.reason, []).append(row)
    parts = [f"{reason}: {_names(rows)}" for reason, rows in by_reason.items()]
    return f"{len(undecided)} gated row(s) could not be judged — " + "; ".join(parts)


def headline(comparison: Comparison) -> str:
    """The outcome in one line: REGRESSION, INCONCLUSIVE or no regression (all judged)."""
    worse = comparison.regressions
    if worse:
        more = comparison.undecided
        also = f"; {len(more)} more gated row(s) could not be judged" if more else ""
        return f"REGRESSION: {len(worse)} metric(s) got worse: {_names(worse, 5)}{also}"
    if comparison.outcome == "inconclusive":
        return f"INCONCLUSIVE: {inconclusive_line(comparison)}"
    gated = comparison.gated
    better = sum(r.verdict == "better" for r in gated)
    info = len(comparison.rows) - len(gated)
    extra = f"; {info} information only" if info else ""
    return (
        f"no regression: all {len(gated)} gated rows judged ({len(gated) - better} unchanged, "
        f"{better} better){extra}"
    )


def method_line(comparison: Comparison) -> str:
    return (
        f"verdicts on the {level(comparison.confidence)} bootstrap interval of the ratio of medians "
        f"({RESAMPLES:,} resamples of the repeats within each run, seed {SEED}); p: two-sided "
        f"Mann–Whitney U, information only; untrusted: a point not target-bound or with outside "
        f"CPU over {comparison.max_other_cpu:g} % of a core"
    )


def thresholds_line(comparison: Comparison) -> str:
    """Which thresholds were used, per metric, and from where."""
    used: dict[str, dict[str, None]] = {}
    for row in comparison.rows:
        text = f"{row.threshold:.1%}".replace("%", " %")
        if row.threshold_source != "default":
            text += f" {row.threshold_source}"
        used.setdefault(row.metric, {})[text] = None
    parts = [f"{metric} {' / '.join(texts)}" for metric, texts in used.items()]
    source = f" (calibrated: {comparison.calibration})" if comparison.calibration else ""
    return f"thresholds{source}: " + ", ".join(parts)


def untrusted_lines(comparison: Comparison) -> list[str]:
    """The untrusted points, one line per run and reason: which points, and why."""
    by: dict[tuple[str, str], dict[str, list[int]]] = {}
    for d in comparison.untrusted:
        for reason in d.reasons:
            by.setdefault((d.run, reason), {}).setdefault(d.name, []).append(d.repeat)
    return [
        f"{run} "
        + ", ".join(f"{name} {repeats_text(reps)}" for name, reps in points.items())
        + f": {reason}"
        for (run, reason), points in by.items()
    ]


def terminal(comparison: Comparison) -> str:
    """A plain fixed-width table for logs, ending with the headline."""
    lines = [plain_table(headers(comparison), [_cells(r) for r in comparison.rows])]
    lines += [f"warning: {w}" for w in comparison.warnings]
    lines += [f"untrusted: {line}" for line in untrusted_lines(comparison)]
    lines += [thresholds_line(comparison), method_line(comparison), headline(comparison)]
    return "\n".join(lines)


def _order(row: Row) -> tuple[bool, bool, bool]:
    return (not row.regressed, not row.undecided, row.verdict != "better")


def markdown(comparison: Comparison, gate_results: list[GateResult] | None = None) -> str:
    """Markdown for a CI job summary or a PR comment: headline, regressions first, then rows
    that could not be judged, then all."""
    out = [
        f"## clusterlab compare: {headline(comparison)}",
        "",
        f"Baseline `{comparison.baseline}` → current `{comparison.current}`: outcome "
        f"**{comparison.outcome}** (exit {comparison.exit_status}). Outcomes: unchanged (0, "
        "every gated row judged, none worse), regression (1, a gated row's interval wholly "
        "beyond its threshold on the worse side), inconclusive (3, a gated row untrusted, not "
        "comparable, or with its interval across the threshold).",
        "",
        f"{method_line(comparison)}. {LEGEND}.",
        "",
        thresholds_line(comparison),
        "",
    ]
    out += [f"> **Warning:** {w}" for w in comparison.warnings]
    if comparison.warnings:
        out.append("")
    untrusted = untrusted_lines(comparison)
    if untrusted:
        out += ["**Untrusted points** (their rows cannot be judged):", ""]
        out += [f"* {line}" for line in untrusted] + [""]
    rows = sorted(comparison.rows, key=_order)
    cells = [[f"**{c}**" if c and row.regressed else c for c in _cells(row)] for row in rows]
    out.append(markdown_table(pd.DataFrame(cells, columns=headers(comparison))))
    if gate_results:
        out += ["", gates_markdown(gate_results)]
    return "\n".join(out) + "\n"


def gates_markdown(results: list[GateResult]) -> str:
    failed = [r for r in results if not r.passed]
    title = (
        f"{len(failed)} of {len(results)} gate checks FAILED"
        if failed
        else f"all {len(results)} gate checks passed"
    )
    rows = [
        [
            f"`{r.gate.text}`",
            r.name,
            _num(r.value),
            f"{'ok' if r.passed else '**FAILED**'} ({r.message})",
        ]
        for r in results
    ]
    table = pd.DataFrame(rows, columns=["gate", "workload/policy/workers", "value", "result"])
    return f"### Gates: {title}\n\n{markdown_table(table)}\n"


def gates_terminal(results: list[GateResult]) -> str:
    lines = [
        f"{'ok    ' if r.passed else 'FAILED'}  {r.gate.text:<32} {r.name:<24} {r.message}"
        for r in results
    ]
    failed = sum(not r.passed for r in results)
    lines.append(
        f"gates: {failed} of {len(results)} failed"
        if failed
        else f"gates: all {len(results)} passed"
    )
    return "\n".join(lines)


def _case_text(row: Row) -> str:
    return (
        f"baseline {_spread(row.baseline)}, current {_spread(row.current)}, "
        f"ratio {_ratio(row.ratio)}, interval {_interval(row)}, threshold {row.threshold:.1%}, "
        f"p {'–' if row.p_value is None else f'{row.p_value:.3g}'}"
    )


def _compare_suite(suites: ET.Element, comparison: Comparison) -> None:
    """A case per row: a regression fails, a gated row that could not be judged is an error
    (type "inconclusive": never a pass), an information-only row is skipped."""
    suite = ET.SubElement(suites, "testsuite", name="clusterlab.compare")
    properties = ET.SubElement(suite, "properties")
    for name, value in (
        ("outcome", comparison.outcome),
        ("exit_status", str(comparison.exit_status)),
        ("headline", headline(comparison)),
    ):
        ET.SubElement(properties, "property", name=name, value=value)
    for row in comparison.rows:
        case = ET.SubElement(suite, "testcase", classname=f"compare.{row.name}", name=row.metric)
        text = _case_text(row)
        if row.regressed:
            ET.SubElement(
                case, "failure", message=f"{row.metric} worse: {text}", type="regression"
            ).text = text
        elif row.undecided:
            ET.SubElement(
                case,
                "error",
                message=f"{row.metric} inconclusive ({row.verdict}): {row.note}",
                type="inconclusive",
            ).text = f"{text}; {row.note}"
        elif not row.gating:
            ET.SubElement(case, "skipped", message=row.note or "information only")
        else:
            ET.SubElement(case, "system-out").text = f"{row.verdict}: {text} {row.note}".strip()
    _count(suite)


def junit(comparison: Comparison | None, gate_results: list[GateResult] | None = None) -> str:
    """JUnit XML: suite clusterlab.compare (a case per row), suite clusterlab.gates."""
    suites = ET.Element("testsuites", name="clusterlab")
    if comparison is not None:
        _compare_suite(suites, comparison)
    if gate_results is not None:
        suite = ET.SubElement(suites, "testsuite", name="clusterlab.gates")
        for r in gate_results:
            case = ET.SubElement(suite, "testcase", classname=f"gates.{r.name}", name=r.gate.text)
            if not r.passed:
                ET.SubElement(case, "failure", message=r.message, type="gate").text = r.message
        _count(suite)
    ET.indent(suites)
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"
    )


def _count(suite: ET.Element) -> None:
    cases = suite.findall("testcase")
    suite.set("tests", str(len(cases)))
    suite.set("failures", str(sum(c.find("failure") is not None for c in cases)))
    suite.set("errors", str(sum(c.find("error") is not None for c in cases)))
    suite.set("skipped", str(sum(c.find("skipped") is not None for c in cases)))


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _json_row(r: Row) -> dict[str, Any]:
    return {
        "metric": r.metric,
        **r.group,
        "baseline": [_finite(v) for v in r.baseline],
        "current": [_finite(v) for v in r.current],
        "higher_is_better": r.direction > 0,
        "machine_independent": r.machine_independent,
        "threshold": r.threshold,
        "threshold_source": r.threshold_source,
        "ratio": _finite(r.ratio),
        "interval": None if r.interval is None else [_finite(v) for v in r.interval],
        "p_value": r.p_value,
        "verdict": r.verdict,
        "gating": r.gating,
        "judged": not r.undecided,
        "untrusted": list(r.untrusted),
        "note": r.note,
    }


def compare_dict(comparison: Comparison) -> dict[str, Any]:
    """The comparison as JSON-ready data (the "compare" member of ``--json``)."""
    return {
        "baseline": comparison.baseline,
        "current": comparison.current,
        "outcome": comparison.outcome,
        "exit_status": comparison.exit_status,
        "headline": headline(comparison),
        "regression": bool(comparison.regressions),
        "interval": {
            "of": "ratio current/baseline of the medians over repeats",
            "method": "percentile bootstrap, repeats resampled with replacement within each run",
            "confidence": comparison.confidence,
            "resamples": RESAMPLES,
            "seed": SEED,
        },
        "test": "Mann-Whitney U, two-sided (information only)",
        "max_other_cpu": comparison.max_other_cpu,
        "calibration": comparison.calibration or None,
        "warnings": comparison.warnings,
        "untrusted_points": [
            {
                "run": d.run,
                **dict(zip(GROUP_KEYS, d.key, strict=True)),
                "repeat": d.repeat,
                "reasons": list(d.reasons),
            }
            for d in comparison.untrusted
        ],
        "rows": [_json_row(r) for r in comparison.rows],
    }


def to_json(comparison: Comparison | None, gate_results: list[GateResult] | None = None) -> str:
    data: dict[str, Any] = {}
    if comparison is not None:
        data["compare"] = compare_dict(comparison)
    if gate_results is not None:
        data["gates"] = [
            {
                "gate": r.gate.text,
                "metric": r.gate.metric,
                "op": r.gate.op,
                "limit": r.gate.limit,
                "group": r.group,
                "value": r.value,
                "passed": r.passed,
                "message": r.message,
            }
            for r in gate_results
        ]
    return json.dumps(data, indent=2) + "\n"
