"""The pytest entry point: a user's test gets `clusterlab_run`, runs a scenario, checks gates
and numbers, and the report is attached to the test's report; `clusterlab_compare` reports
compare's three outcomes (passed, failed, INCONCLUSIVE — never a pass)."""

import json
import subprocess
import sys
from importlib import metadata
from xml.etree import ElementTree as ET

import pytest
from compare_fixtures import edit_points, summary

USER_TEST = '''
SCENARIO = """
[target]
kind = "builtin"
[sweep]
workers = [1]
[workloads]
hello = { "/hello" = 1 }
[load]
users = 4
warmup = 0.5
duration = 1
[gates]
failure_ratio = "< 1%"
"""


def test_capacity(clusterlab_run):
    run = clusterlab_run(SCENARIO)
    assert run.gates_passed, run.gates_text
    assert run.median("rps", workload="hello") > 10
    assert run.failed_points == 0
    assert False, "show the attached report"
'''

pytestmark = pytest.mark.slow


COMPARE_TEST = """
def test_unchanged(clusterlab_compare):
    result = clusterlab_compare("base", "same")
    assert result.outcome == "unchanged"


def test_regression(clusterlab_compare):
    clusterlab_compare("base", "slow")


def test_inconclusive(clusterlab_compare):
    clusterlab_compare("base", "busy/summary.json")
"""
BASE = {("cpu", "rr", 1): [500, 510, 490, 505, 495]}
SLOW = {("cpu", "rr", 1): [400, 408, 392, 404, 396]}


def pytest_user(tmp_path, test_file, *args):
    installed = any(
        e.value == "clusterlab.lab.ci.pytest_plugin"
        for e in metadata.entry_points(group="pytest11")
    )
    plugin = [] if installed else ["-p", "clusterlab.lab.ci.pytest_plugin"]  # not reinstalled yet
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            *plugin,
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
            *args,
            str(tmp_path / test_file),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )


def test_compare_outcomes_are_passed_failed_and_inconclusive(tmp_path):
    busy = edit_points(summary(BASE), lambda p: p["repeat"] == 2, other=90.0)
    for name, data in (
        ("base", summary(BASE)),
        ("same", summary(BASE)),
        ("slow", summary(SLOW)),
        ("busy", busy),
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps(data))
    (tmp_path / "test_compare_user.py").write_text(COMPARE_TEST)
    done = pytest_user(tmp_path, "test_compare_user.py", "--junitxml", "j.xml")
    out = done.stdout
    assert done.returncode == 1, out + done.stderr  # inconclusive does not pass
    assert "1 failed, 1 passed, 1 inconclusive" in out
    assert ".FI" in out
    assert "FAILED test_compare_user.py::test_regression - Failed: REGRESSION" in out
    assert "= clusterlab: inconclusive (not passed) =" in out
    assert (
        "INCONCLUSIVE test_compare_user.py::test_inconclusive: INCONCLUSIVE: 5 gated row(s) "
        "could not be judged — untrusted points: rps cpu/rr/1"
    ) in out
    assert "untrusted: current cpu/rr/1 r2: outside CPU 90 % of a core (limit 25 %)" in out
    cases = {c.get("name"): c for c in ET.parse(tmp_path / "j.xml").getroot().iter("testcase")}
    outcome = {
        name: next(
            p.get("value") for p in c.iter("property") if p.get("name") == "clusterlab_compare"
        )
        for name, c in cases.items()
    }
    assert outcome == {
        "test_unchanged": "unchanged",
        "test_regression": "regression",
        "test_inconclusive": "inconclusive",
    }
    assert cases["test_inconclusive"].find("failure") is not None


def test_a_user_test_runs_a_scenario_with_the_fixture(tmp_path):
    (tmp_path / "test_user.py").write_text(USER_TEST)
    done = pytest_user(tmp_path, "test_user.py")
    out = done.stdout
    assert "AssertionError: show the attached report" in out, out + done.stderr
    assert "Captured clusterlab call" in out and "all 1 gate checks passed" in out


def test_a_finished_run_compares_itself_and_writes_the_outputs(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from clusterlab.lab.ci.pytest_plugin import compare_run
    from clusterlab.lab.pipeline import LabRun

    monkeypatch.setenv("CLUSTERLAB_BASELINES", str(tmp_path / "store"))
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "summary.json").write_text(json.dumps(summary(BASE)))
    out = tmp_path / "run"
    out.mkdir()
    run = LabRun(
        SimpleNamespace(out_dir=out),
        SimpleNamespace(summary=summary(SLOW)),
        out / "report.md",
    )
    result = compare_run(tmp_path / "base", run)
    assert result.outcome == "regression" and result.current == str(out)
    assert json.loads((out / "compare.json").read_text())["compare"]["outcome"] == "regression"
    assert (out / "compare.md").read_text().startswith("## clusterlab compare: REGRESSION")
    assert ET.parse(out / "compare.xml").getroot().find("testsuite").get("failures") == "2"
