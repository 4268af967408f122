"""What a command imports before it does anything: scipy.stats (and scipy.optimize, which it
imports) take 1-2 s to import on the project's 2-core machine, and every ``clusterlab run`` and
``history``/``baseline`` command paid it at start-up without using it. They are imported where a
test or a fit needs them; these checks keep it so (a fresh interpreter each, as the CLI is)."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.parallel_ok  # starts no load: runs beside the cluster tests

HEAVY = ("scipy.stats", "scipy.optimize", "kneed")


def loaded_after(*modules: str) -> list[str]:
    code = (
        f"import sys\nfor m in {modules!r}: __import__(m)\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return eval(done.stdout)


def test_a_run_imports_no_scipy_stats_before_its_first_point():
    # what cli._run and the pipeline import before the first phase, and the analysis after it
    # (its latency intervals, a report without load levels or three worker counts)
    assert (
        loaded_after(
            "clusterlab.cli",
            "clusterlab.lab.ci.outputs",
            "clusterlab.lab.output.policies",
            "clusterlab.lab.pipeline",
            "clusterlab.lab.running.latency",
            "clusterlab.lab.analysis.capacity",
        )
        == []
    )


def test_history_and_baseline_commands_import_no_scipy_stats():
    assert (
        loaded_after(
            "clusterlab.lab.ci.history_command",
            "clusterlab.lab.ci.baseline",
            "clusterlab.lab.ci.compare",
            "clusterlab.lab.ci.trend",
        )
        == []
    )
