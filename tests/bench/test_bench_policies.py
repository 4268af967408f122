"""bench/policies.py and the suite's policies row, without load: which servers, which baseline
tree, and a missing wrk."""

import subprocess

import pytest

from bench import peers, policies, suite


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=peers.ROOT, capture_output=True, text=True)


def test_baseline_is_the_commit_before_schedulers() -> None:
    try:
        base = policies.baseline_commit()
    except ValueError as exc:
        pytest.skip(f"no history here: {exc}")
    assert _git("cat-file", "-e", f"{base}:clusterlab/cluster/_round_robin.py").returncode == 0
    assert _git("cat-file", "-e", f"{base}:clusterlab/cluster/_scheduler.py").returncode != 0


def test_worktree_holds_the_old_tree_and_is_removed() -> None:
    try:
        base = policies.baseline_commit()
    except ValueError as exc:
        pytest.skip(f"no history here: {exc}")
    with policies.worktree(base) as tree:
        assert (tree / "bench" / "clusterlab_hello.py").is_file()
        assert not (tree / "clusterlab" / "cluster" / "_scheduler.py").exists()
        old = policies.base_spec(2, tree)
    assert not tree.exists()
    assert str(tree) not in _git("worktree", "list").stdout
    assert old.name == "clusterlab-rr-base" and old.env == {"PYTHONPATH": str(tree)}
    assert old.argv[1] == f"{tree}/bench/clusterlab_hello.py" and old.argv[-1] == "rr"


def test_scheduler_specs_are_rr_and_every_builtin() -> None:
    specs = policies.scheduler_specs(2)
    assert [s.name for s in specs] == [f"clusterlab-{n}" for n in ("rr", *policies.SCHEDULERS)]
    assert all(s.argv[-2:] == ["--policy", s.name.removeprefix("clusterlab-")] for s in specs)
    assert len({s.port for s in specs}) == len(specs)


def test_missing_wrk_skips_the_policy_rows_without_starting_anything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(suite.shutil, "which", lambda name: None)
    run = suite.Suite(suite.Settings())
    run.policies()
    assert [r.clusterlab for r in run.rows] == ["skipped"] * len(policies.SCHEDULERS)
    assert "policies" in suite.ROWS and suite.parse_only("policies") == ["policies"]
