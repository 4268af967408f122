"""The lab's pipeline, end to end, in one function for the CLI and the pytest plugin:

scenario → plan → run (raw tables) → analysis → outputs (plots, summary.json, report.md,
report.html) → gates (gates.json, gates.md, gates.xml).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clusterlab.lab.analysis.analysis import Analysis, analyze
from clusterlab.lab.analysis.tables import load_results
from clusterlab.lab.ci import outputs
from clusterlab.lab.ci.compare import Comparison
from clusterlab.lab.ci.gates import GateResult, check_gates, groups, point_value
from clusterlab.lab.config.gates import GROUP_KEYS, canonical_metric
from clusterlab.lab.config.scenario import Scenario
from clusterlab.lab.output.report import write_outputs
from clusterlab.lab.running import phases
from clusterlab.lab.running.cpus import plan_cpus, usable_cpus
from clusterlab.lab.running.runner import Progress, RunOutcome, run_scenario


@dataclass(frozen=True)
class LabRun:
    """A finished run: what happened, its analysis, and the scenario's gate results."""

    outcome: RunOutcome
    analysis: Analysis
    report: Path
    gate_results: list[GateResult] = field(default_factory=list)

    @property
    def out_dir(self) -> Path:
        return self.outcome.out_dir

    @property
    def summary(self) -> dict[str, Any]:
        return self.analysis.summary

    @property
    def failed_points(self) -> int:
        return self.outcome.failed

    @property
    def gates_passed(self) -> bool:
        return all(r.passed for r in self.gate_results)

    @property
    def gates_text(self) -> str:
        return outputs.gates_terminal(self.gate_results) if self.gate_results else "no gates"

    @property
    def report_md(self) -> str:
        return self.report.read_text()

    def median(self, metric: str, **where: Any) -> float:
        """Median over repeats of ``metric`` in the groups matching ``where`` (workload, policy,
        workers); KeyError for an unknown metric."""
        name = canonical_metric(metric)
        if name is None:
            raise KeyError(metric)
        values = [
            point_value(p, name)
            for key, members in groups(self.summary["points"]).items()
            if all(
                str(dict(zip(GROUP_KEYS, key, strict=True))[k]) == str(v) for k, v in where.items()
            )
            for p in members
        ]
        finite = [v for v in values if math.isfinite(v)]
        return statistics.median(finite) if finite else math.nan

    def compare(self, baseline: str | Path, **options: Any) -> Comparison:
        """This run compared with a baseline (a saved name, a run directory or summary.json),
        with its calibrated thresholds when it has them; written to compare.md, compare.xml and
        compare.json in the run directory. ``options``: those of ``ci.compare.compare()``."""
        from clusterlab.lab.ci.baseline import compare_with

        result = compare_with(baseline, self.summary, str(self.out_dir), **options)
        (self.out_dir / "compare.md").write_text(outputs.markdown(result))
        (self.out_dir / "compare.xml").write_text(outputs.junit(result))
        (self.out_dir / "compare.json").write_text(outputs.to_json(result))
        return result


def run_lab(scenario: Scenario, out_dir: Path, progress: Progress) -> LabRun:
    """Run every point of ``scenario`` into ``out_dir`` (which must not exist), analyse it,
    write its outputs and check its gates. ``CpuSplitError`` (before anything is written) when
    the scenario asks for a CPU split this machine cannot give."""
    log = phases.begin()
    cpus = plan_cpus(scenario.cpus, usable_cpus())
    outcome = run_scenario(scenario, out_dir, progress, cpus)
    with log.timed("report"):
        analysis = analyze(load_results(out_dir))
        report = write_outputs(analysis)
        results = check_gates(scenario.gates, analysis.summary) if scenario.gates else []
        if results:
            (out_dir / "gates.json").write_text(outputs.to_json(None, results))
            (out_dir / "gates.md").write_text(outputs.gates_markdown(results))
            (out_dir / "gates.xml").write_text(outputs.junit(None, results))
    log.write(out_dir / "phases.csv")
    return LabRun(outcome, analysis, report, results)
