"""The reliability suite's figures: each test records what it measured against its target
(fixture `figure`), and the session ends with one table, target by target.

The table prints under CLUSTERLAB_STRESS=1 (`make stress`), with -v, or with
CLUSTERLAB_FIGURES=1; `make test` stays quiet otherwise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

from .support import STRESS


@dataclass
class Figure:
    target: str
    figure: str
    nodeid: str
    group: str | None = None


_FIGURES: list[Figure] = []
_OUTCOMES: dict[str, str] = {}
_TARGETS: dict[str, str] = {}  # nodeid -> its module's TARGET
_XFAIL_REASONS: dict[str, str] = {}
_LEFT_BEHIND: dict[str, bool] = {}


@pytest.fixture
def figure(request):
    """figure(target, text, group=None): what this test measured for a reliability target.
    Figures of one `group` (the cases of a corpus) print as one row."""

    def add(target: str, text: str, group: str | None = None) -> None:
        _FIGURES.append(Figure(target, text, request.node.nodeid, group))

    return add


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if "reliability" not in item.nodeid:
        return
    _TARGETS[item.nodeid] = getattr(item.module, "TARGET", item.module.__name__)
    if report.when == "call" or (report.when == "setup" and not report.passed):
        if hasattr(report, "wasxfail"):
            _OUTCOMES[item.nodeid] = "xfail" if report.skipped else "XPASS"
            _XFAIL_REASONS[item.nodeid] = report.wasxfail
        else:
            _OUTCOMES[item.nodeid] = report.outcome
    elif report.when == "teardown":
        left = report.failed and "left behind" in str(report.longrepr)
        _LEFT_BEHIND[item.nodeid] = left
        if report.failed:
            _OUTCOMES[item.nodeid] = "failed"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    wanted = STRESS or config.option.verbose > 0 or os.environ.get("CLUSTERLAB_FIGURES")
    if not wanted or not _OUTCOMES:
        return
    rows = [
        (f.target, f.figure, _OUTCOMES.get(f.nodeid, "?"), f.nodeid.split("::")[-1])
        for f in _FIGURES
        if f.group is None
    ]
    groups: dict[tuple[str, str], list[Figure]] = {}
    for f in _FIGURES:
        if f.group is not None:
            groups.setdefault((f.target, f.group), []).append(f)
    for (target, group), members in groups.items():
        bad = [f for f in members if _OUTCOMES.get(f.nodeid) != "passed"]
        example = members[0].figure
        text = f"{len(members)} {group}, {len(members) - len(bad)} passed" + (
            f"; not passed: {', '.join(f.figure for f in bad)}" if bad else f"; e.g. {example}"
        )
        rows.append((target, text, "failed" if bad else "passed", "(corpus)"))
    measured = {f.nodeid for f in _FIGURES}
    rows += [
        (
            _TARGETS[nodeid],
            _XFAIL_REASONS.get(nodeid, "(no figure)"),
            outcome,
            nodeid.split("::")[-1],
        )
        for nodeid, outcome in _OUTCOMES.items()
        if nodeid not in measured and outcome != "passed"
    ]
    left = sum(_LEFT_BEHIND.values())
    rows.append(
        (
            "no process left behind",
            f"{len(_LEFT_BEHIND)} tests checked, {left} left a process behind",
            "passed" if left == 0 else "failed",
            "(every test's teardown)",
        )
    )
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    widths = [max(w, len(h)) for w, h in zip(widths, ("target", "figure", "result"), strict=True)]
    tr = terminalreporter
    tr.section(f"reliability figures ({'long: CLUSTERLAB_STRESS=1' if STRESS else 'short'})")
    tr.write_line(f"{'target':<{widths[0]}}  {'result':<{widths[2]}}  figure")
    for target, text, result, test in sorted(rows, key=lambda r: r[0]):
        tr.write_line(f"{target:<{widths[0]}}  {result:<{widths[2]}}  {text}  [{test}]")
