"""pytest entry point: the ``clusterlab_run`` fixture, for performance checks written as tests.

```python
def test_capacity(clusterlab_run):
    run = clusterlab_run("scenarios/ci.toml")          # or a bundled name, or TOML text
    assert run.gates_passed, run.gates_text
    assert run.median("rps", workload="cpu", workers=2) > 300
```

Registered through the ``pytest11`` entry point ``clusterlab`` (or
``-p clusterlab.lab.ci.pytest_plugin``). Each run goes to the test's temporary directory; its
report.md (and the gate results) is attached to the test's report as a "clusterlab" section,
shown for failing tests and in ``-rA``. The lab itself (pandas, scipy, matplotlib) is imported
only when a test calls the fixture, so the plugin costs nothing to a test run that does not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from clusterlab.lab.pipeline import LabRun


def run_lab(scenario: str | Path, out_dir: Path) -> LabRun:
    """Run a scenario (a file, a bundled name or TOML text) into ``out_dir``: the same pipeline
    as ``clusterlab run``, quietly."""
    from clusterlab.lab import pipeline
    from clusterlab.lab.config.scenario import load_scenario, resolve_scenario
    from clusterlab.lab.running.progress import ConsoleProgress

    text = str(scenario)
    if "\n" in text or "[target]" in text:
        path = out_dir.parent / f"{out_dir.name}.toml"
        path.write_text(text)
    else:
        path = resolve_scenario(text)
    loaded = load_scenario(path)
    return pipeline.run_lab(loaded, out_dir, ConsoleProgress(quiet=True))


@pytest.fixture
def clusterlab_run(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[str | Path], LabRun]]:
    """Call it with a scenario to run it; the report is attached to the test's report."""
    from clusterlab.lab.ci import outputs

    runs: list[LabRun] = []

    def run(scenario: str | Path) -> LabRun:
        done = run_lab(scenario, tmp_path / f"clusterlab-run-{len(runs)}")
        runs.append(done)
        text = f"report: {done.out_dir}\n\n{done.report_md}"
        if done.gate_results:
            text += "\n" + outputs.gates_markdown(done.gate_results)
        # added during the test's call phase, so the call report carries it
        request.node.add_report_section("call", "clusterlab", text)
        request.node.user_properties.append(("clusterlab_report", str(done.report)))
        return done

    yield run
