"""pytest entry point: the ``clusterlab_run`` fixture, for performance checks written as tests,
and ``clusterlab_compare``, for regression checks against a baseline.

```python
def test_capacity(clusterlab_run):
    run = clusterlab_run("scenarios/ci.toml")          # or a bundled name, or TOML text
    assert run.gates_passed, run.gates_text
    assert run.median("rps", workload="cpu", workers=2) > 300


def test_no_regression(clusterlab_run, clusterlab_compare):
    clusterlab_compare("main", clusterlab_run("ci"))   # a saved baseline, or a run directory
```

Registered through the ``pytest11`` entry point ``clusterlab`` (or
``-p clusterlab.lab.ci.pytest_plugin``). Each run goes to the test's temporary directory; its
report.md (and the gate results) is attached to the test's report as a "clusterlab" section,
shown for failing tests and in ``-rA``. The lab itself (pandas, scipy, matplotlib) is imported
only when a test calls a fixture, so the plugin costs nothing to a test run that does not.

``clusterlab_compare(baseline, current)`` reports compare's three outcomes: **unchanged** passes
(and returns the ``Comparison``); **regression** fails the test; **inconclusive** (a gated metric
could not be judged: untrusted points, too few repeats, an interval across the threshold) fails
it too — a check that could not judge never passes — but is reported as ``INCONCLUSIVE`` (letter
``I``, its own count in the summary line and an "inconclusive" section at the end) so that it
reads apart from a regression. The comparison's Markdown is attached as a "clusterlab compare"
section, and the outcome is a user property ``clusterlab_compare`` (it reaches ``--junitxml``).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from clusterlab.lab.ci.compare import Comparison
    from clusterlab.lab.pipeline import LabRun

INCONCLUSIVE = "inconclusive"


class Inconclusive(AssertionError):
    """A comparison that could not judge a gated metric: the test does not pass."""

    __module__ = "clusterlab"


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


def compare_run(baseline: str | Path, current: LabRun | str | Path, **options: Any) -> Comparison:
    """``current`` (a finished run, or a run directory / summary.json) compared with
    ``baseline`` (a saved baseline's name, a run directory or summary.json)."""
    from clusterlab.lab.ci.baseline import compare_with, resolve
    from clusterlab.lab.ci.compare import load_summary

    if isinstance(current, str | Path):
        return compare_with(baseline, load_summary(resolve(current)), str(current), **options)
    return current.compare(baseline, **options)


@pytest.fixture
def clusterlab_compare(
    request: pytest.FixtureRequest,
) -> Callable[..., Comparison]:
    """Call it with a baseline and a run: passes when unchanged, fails on a regression, and is
    INCONCLUSIVE (not a pass) when a gated metric could not be judged."""
    from clusterlab.lab.ci import outputs

    def check(baseline: str | Path, current: LabRun | str | Path, **options: Any) -> Comparison:
        result = compare_run(baseline, current, **options)
        request.node.add_report_section("call", "clusterlab compare", outputs.markdown(result))
        request.node.user_properties.append(("clusterlab_compare", result.outcome))
        if result.outcome == "regression":
            pytest.fail(outputs.headline(result), pytrace=False)
        if result.outcome == INCONCLUSIVE:
            why = [f"untrusted: {line}" for line in outputs.untrusted_lines(result)]
            raise Inconclusive("\n".join([outputs.headline(result), *why]))
        return result

    return check


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A test that raised ``Inconclusive`` keeps failing, marked inconclusive, with the
    headline as its whole message."""
    report = yield
    if call.excinfo is not None and call.excinfo.errisinstance(Inconclusive):
        report.clusterlab_outcome = INCONCLUSIVE  # type: ignore[attr-defined]
        report.longrepr = f"INCONCLUSIVE {item.nodeid}: {call.excinfo.value}"
    return report


def pytest_report_teststatus(
    report: pytest.TestReport, config: pytest.Config
) -> tuple[str, str, tuple[str, dict[str, bool]]] | None:
    if getattr(report, "clusterlab_outcome", None) == INCONCLUSIVE:
        return INCONCLUSIVE, "I", ("INCONCLUSIVE", {"yellow": True})
    return None


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    reports = terminalreporter.stats.get(INCONCLUSIVE, [])
    if reports:
        terminalreporter.section("clusterlab: inconclusive (not passed)", sep="=", yellow=True)
        for report in reports:
            terminalreporter.line(str(report.longrepr))
