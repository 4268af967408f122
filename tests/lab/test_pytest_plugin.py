"""The pytest entry point: a user's test gets `clusterlab_run`, runs a scenario, checks gates
and numbers, and the report is attached to the test's report."""

import subprocess
import sys
from importlib import metadata

import pytest

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


def test_a_user_test_runs_a_scenario_with_the_fixture(tmp_path):
    (tmp_path / "test_user.py").write_text(USER_TEST)
    installed = any(
        e.value == "clusterlab.lab.ci.pytest_plugin"
        for e in metadata.entry_points(group="pytest11")
    )
    plugin = [] if installed else ["-p", "clusterlab.lab.ci.pytest_plugin"]  # not reinstalled yet
    done = subprocess.run(
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
            str(tmp_path / "test_user.py"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    out = done.stdout
    assert "AssertionError: show the attached report" in out, out + done.stderr
    assert "Captured clusterlab call" in out and "all 1 gate checks passed" in out
