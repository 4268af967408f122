"""pytest entry point: the ``clusterlab_run`` fixture, for performance checks written as tests.

```python
def test_capacity(clusterlab_run):
    run = clusterlab_run("scenarios/ci.toml")          # or a bundled name, or TOML text
    assert run.gates_passed, run.gates_text
    assert run.median("rps", workload="cpu", workers=2) > 300
```

Registered through the ``pytest11`` entry point ``clusterlab`` (or ``-p clusterlab.lab.ci.pytest_plugin``).
Each run goes to the test's temporary directory; its report.md (and the gate results) is attached
to the test's report as a "clusterlab" section, shown for failing tests and in ``-rA``.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from clusterlab.lab.ci import outputs as ci_output
from clusterlab.lab.config.gates import (
    GateResult,
    canonical_metric,
    check_gates,
    groups,
    point_value,
)


@dataclass
class LabRun:
    """A finished run: its directory, summary.json, and the scenario's gate results."""

    out_dir: Path
    summary: dict[str, Any]
    gate_results: list[GateResult] = field(default_factory=list)
    failed_points: int = 0

    @property
    def gates_passed(self) -> bool:
        return all(r.passed for r in self.gate_results)

    @property
    def gates_text(self) -> str:
        return ci_output.gates_terminal(self.gate_results) if self.gate_results else "no gates"

    @property
    def report_md(self) -> str:
        return (self.out_dir / "report.md").read_text()

    def median(self, metric: str, **where: Any) -> float:
        """Median over repeats of ``metric`` in the one group matching ``where``."""
        name = canonical_metric(metric)
        if name is None:
            raise KeyError(metric)
        values = [
            point_value(p, name)
            for key, members in groups(self.summary["points"]).items()
            if all(
                str(dict(zip(("workload", "policy", "workers"), key, strict=True))[k]) == str(v)
                for k, v in where.items()
            )
            for p in members
        ]
        finite = [v for v in values if math.isfinite(v)]
        return statistics.median(finite) if finite else math.nan


def run_lab(scenario: str | Path, out_dir: Path) -> LabRun:
    """Run a scenario (a file, a bundled name or TOML text) into ``out_dir``; build the report."""
    from clusterlab.cli import _resolve
    from clusterlab.lab.config.scenario import load_scenario
    from clusterlab.lab.output.report import build_report
    from clusterlab.lab.running.progress import ConsoleProgress
    from clusterlab.lab.running.runner import run_scenario

    text = str(scenario)
    if "\n" in text or "[target]" in text:
        path = out_dir.parent / f"{out_dir.name}.toml"
        path.write_text(text)
    else:
        path = _resolve(text)
    loaded = load_scenario(path)
    outcome = run_scenario(loaded, out_dir, ConsoleProgress(quiet=True))
    build_report(out_dir)
    summary = json.loads((out_dir / "summary.json").read_text())
    return LabRun(out_dir, summary, check_gates(loaded.gates, summary), outcome.failed)


@pytest.fixture
def clusterlab_run(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[str | Path], LabRun]]:
    """Call it with a scenario to run it; the report is attached to the test's report."""
    runs: list[LabRun] = []

    def run(scenario: str | Path) -> LabRun:
        done = run_lab(scenario, tmp_path / f"clusterlab-run-{len(runs)}")
        runs.append(done)
        text = f"report: {done.out_dir}\n\n{done.report_md}"
        if done.gate_results:
            text += "\n" + ci_output.gates_markdown(done.gate_results)
        # added during the test's call phase, so the call report carries it
        request.node.add_report_section("call", "clusterlab", text)
        request.node.user_properties.append(("clusterlab_report", str(done.out_dir / "report.md")))
        return done

    yield run
