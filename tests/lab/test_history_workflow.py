"""examples/ci-workflow.yml, run: every ``run:`` step in order, as GitHub would for a push to main
and then a pull request (``GITHUB_STEP_SUMMARY`` a temporary file, a one-point scenario of about a
second, ``.clusterlab`` kept between the two jobs as the cache would keep it)."""

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

WORKFLOW = Path(__file__).parents[2] / "examples" / "ci-workflow.yml"
SHORT = """
name = "short"
description = "the workflow test's scenario: one point of a second"
[target]
kind = "builtin"
[sweep]
workers = [1]
policies = ["rr"]
repeats = 1
[workloads]
cpu = { "/cpu?ms=1" = 1 }
[load]
users = 4
warmup = 0.5
duration = 1
processes = 1
"""


def steps() -> list[dict]:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    (job,) = workflow["jobs"].values()
    return job["steps"]


def job(workspace: Path, event: str, sha: str) -> dict[str, subprocess.CompletedProcess | None]:
    """Every ``run:`` step of the workflow in order, with GitHub's rules for ``if``: none runs
    after a failed step, ``always()`` runs anyway (the workflow keeps other conditions in the
    shell). The install step is skipped: the package is installed here."""
    workflow = yaml.safe_load(WORKFLOW.read_text())
    summary = workspace / "step-summary.md"
    env = {
        **os.environ,
        **workflow["env"],
        "CLUSTERLAB_SCENARIO": str(workspace / "short.toml"),
        "GITHUB_EVENT_NAME": event,
        "GITHUB_SHA": sha,
        "GITHUB_REF_NAME": "main" if event == "push" else "1/merge",
        "GITHUB_STEP_SUMMARY": str(summary),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    env.pop("GITHUB_HEAD_REF", None)
    done: dict[str, subprocess.CompletedProcess | None] = {}
    failed = False
    for step in steps():
        if "run" not in step or step["name"] == "Install clusterlab":
            continue
        condition = step.get("if")
        assert condition in (None, "always()"), f"{step['name']}: condition {condition!r}"
        if failed and condition is None:
            done[step["name"]] = None
            continue
        done[step["name"]] = result = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
            cwd=workspace,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        failed = failed or result.returncode != 0
    return done


def statuses(done: dict) -> list[int | None]:
    return [None if r is None else r.returncode for r in done.values()]


def history_runs(workspace: Path) -> list[tuple]:
    with sqlite3.connect(workspace / ".clusterlab" / "history.sqlite") as con:
        return con.execute("SELECT run, revision, branch, scenario FROM runs").fetchall()


def test_the_workflow_keeps_the_cache_between_jobs_and_saves_it_on_main_only():
    names = [s.get("uses", "").split("@")[0] or s["name"] for s in steps()]
    restore, save = (
        next(s for s in steps() if s.get("uses", "").startswith(f"actions/cache/{a}"))
        for a in ("restore", "save")
    )

    assert names.index("actions/cache/restore") < names.index(
        "Run the scenario (gates checked at the end; exit 1 if one fails)"
    )
    assert restore["with"]["path"] == save["with"]["path"] == ".clusterlab"
    assert save["if"] == "always() && github.event_name == 'push'"
    assert names[-1] == "actions/cache/save"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_every_run_step_in_order_for_a_push_to_main_then_a_pull_request(tmp_path):
    (tmp_path / "short.toml").write_text(SHORT)

    push = job(tmp_path, "push", "aaa1111")

    assert statuses(push) == [0, 0, 0, 0], [(r.stdout, r.stderr) for r in push.values() if r]
    assert history_runs(tmp_path) == [(1, "aaa1111", "main", "short")]
    assert (tmp_path / ".clusterlab" / "baselines" / "main" / "summary.json").is_file()
    summary = (tmp_path / "step-summary.md").read_text()
    # one run: too short to judge, or (on a machine busy from outside) its only run untrusted
    assert "### clusterlab history: inconclusive" in summary
    assert "too short" in summary or "newest untrusted" in summary, summary
    assert "# " in summary.split("clusterlab history", 1)[1]  # the run's report.md follows

    shutil.rmtree(tmp_path / "reports")  # a new checkout; .clusterlab comes back from the cache
    (tmp_path / "step-summary.md").unlink()
    pull = job(tmp_path, "pull_request", "bbb2222")

    compare = pull["Compare with the baseline and check the history"]
    # one repeat a side cannot be judged (compare: inconclusive, 3); the history is too short
    # (inconclusive, said, not failing); the tables are published all the same
    assert statuses(pull) == [0, 3, 0, None], compare.stdout + compare.stderr
    assert "baseline main" in compare.stdout and "INCONCLUSIVE" in compare.stdout
    summary = (tmp_path / "step-summary.md").read_text()
    assert "insufficient repeats" in summary and "### clusterlab history: inconclusive" in summary
    assert "2 runs of short" in summary  # main's run and this one, judged without joining
    assert history_runs(tmp_path) == [(1, "aaa1111", "main", "short")]
    assert (tmp_path / "reports" / "history.json").is_file()
