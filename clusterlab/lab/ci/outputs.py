"""CI outputs of a comparison and of gate checks: terminal table, Markdown (a CI job summary or PR
comment), JUnit XML (one test case per compared metric and per gate) and JSON."""

from __future__ import annotations

import json
import math
import statistics
from typing import Any
from xml.etree import ElementTree as ET

import pandas as pd

from clusterlab.lab.ci.compare import Comparison, Row
from clusterlab.lab.ci.gates import GateResult
from clusterlab.lab.output.text import markdown_table, plain_table

MARKS = {"worse": "+", "better": "-", "unchanged": " ", "not comparable": "x"}


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


def _cells(row: Row) -> list[str]:
    verdict = row.verdict.upper() if row.regressed else row.verdict
    note = row.note or ("" if row.gating else "information only")
    return [
        MARKS[row.verdict],
        row.metric + ("" if row.direction < 0 else " ↑"),
        row.name,
        _spread(row.baseline),
        _spread(row.current),
        "–" if row.ratio is None else f"{row.ratio:.3f}",
        "–" if row.p_value is None else f"{row.p_value:.3g}",
        verdict,
        note,
    ]


HEADERS = [
    "",
    "metric",
    "workload/policy/workers",
    "baseline",
    "current",
    "ratio",
    "p",
    "verdict",
    "note",
]


def headline(comparison: Comparison) -> str:
    worse = comparison.regressions
    if worse:
        names = ", ".join(f"{r.metric} {r.name}" for r in worse[:5])
        more = f" and {len(worse) - 5} more" if len(worse) > 5 else ""
        return f"REGRESSION: {len(worse)} metric(s) got worse: {names}{more}"
    better = sum(r.verdict == "better" for r in comparison.rows)
    skipped = sum(r.verdict == "not comparable" for r in comparison.rows)
    return (
        f"no regression ({len(comparison.rows)} compared, {better} better, "
        f"{skipped} not comparable)"
    )


def terminal(comparison: Comparison) -> str:
    """A plain fixed-width table for logs, ending with the headline."""
    lines = [plain_table(HEADERS, [_cells(r) for r in comparison.rows])]
    lines += [f"warning: {w}" for w in comparison.warnings]
    lines.append(headline(comparison))
    return "\n".join(lines)


def markdown(comparison: Comparison, gate_results: list[GateResult] | None = None) -> str:
    """Markdown for a CI job summary or a PR comment: headline, regressions first, then all."""
    out = [
        f"## clusterlab compare: {headline(comparison)}",
        "",
        f"Baseline `{comparison.baseline}` → current `{comparison.current}`. A change counts "
        f"when beyond its threshold and significant (Mann–Whitney U, p < {comparison.alpha}). "
        "`+` worse, `-` better, `x` not comparable, ↑ higher is better.",
        "",
    ]
    out += [f"> **Warning:** {w}" for w in comparison.warnings]
    if comparison.warnings:
        out.append("")
    rows = sorted(comparison.rows, key=lambda r: (not r.regressed, r.verdict != "better"))
    cells = [[f"**{c}**" if c and row.regressed else c for c in _cells(row)] for row in rows]
    out.append(markdown_table(pd.DataFrame(cells, columns=HEADERS)))
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


def junit(comparison: Comparison | None, gate_results: list[GateResult] | None = None) -> str:
    """JUnit XML: suite clusterlab.compare (a case per row), suite clusterlab.gates."""
    suites = ET.Element("testsuites", name="clusterlab")
    if comparison is not None:
        suite = ET.SubElement(suites, "testsuite", name="clusterlab.compare")
        for row in comparison.rows:
            case = ET.SubElement(
                suite, "testcase", classname=f"compare.{row.name}", name=row.metric
            )
            text = (
                f"baseline {_spread(row.baseline)}, current {_spread(row.current)}, "
                f"ratio {'–' if row.ratio is None else f'{row.ratio:.3f}'}, "
                f"p {'–' if row.p_value is None else f'{row.p_value:.3g}'}"
            )
            if row.regressed:
                ET.SubElement(
                    case, "failure", message=f"{row.metric} worse: {text}", type="regression"
                ).text = text
            elif row.verdict == "not comparable":
                ET.SubElement(case, "skipped", message=row.note or "not comparable")
            else:
                ET.SubElement(case, "system-out").text = f"{row.verdict}: {text} {row.note}"
        _count(suite)
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
    suite.set("skipped", str(sum(c.find("skipped") is not None for c in cases)))


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def to_json(comparison: Comparison | None, gate_results: list[GateResult] | None = None) -> str:
    data: dict[str, Any] = {}
    if comparison is not None:
        data["compare"] = {
            "baseline": comparison.baseline,
            "current": comparison.current,
            "alpha": comparison.alpha,
            "test": "Mann-Whitney U, two-sided",
            "regression": bool(comparison.regressions),
            "warnings": comparison.warnings,
            "rows": [
                {
                    "metric": r.metric,
                    **r.group,
                    "baseline": [_finite(v) for v in r.baseline],
                    "current": [_finite(v) for v in r.current],
                    "higher_is_better": r.direction > 0,
                    "machine_independent": r.machine_independent,
                    "threshold": r.threshold,
                    "ratio": _finite(r.ratio),
                    "p_value": r.p_value,
                    "verdict": r.verdict,
                    "gating": r.gating,
                    "note": r.note,
                }
                for r in comparison.rows
            ],
        }
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
