"""The hot-path rows' old tree (bench/refactor_base.py, `--refactor-base`), without load: the
option, the servers and paired phases it adds, and how its rows are judged."""

import subprocess
from pathlib import Path
from typing import Any

import pytest

from bench import peers, policies, refactor_base, suite


def test_option_is_left_out_by_default_and_takes_a_commit() -> None:
    parse = suite._parser().parse_args
    assert suite._settings(parse([])).refactor_base == ""
    assert refactor_base.REFACTOR_BASE == "dc97950"
    assert suite._settings(parse(["--refactor-base", "abc123"])).refactor_base == "abc123"
    left_out = suite.Suite(suite._settings(parse(["--refactor-base", ""])))
    assert left_out.refactor_tree() is None and left_out.notes == []
    left_out.close()


def test_an_unknown_commit_is_noted_and_its_rows_left_out() -> None:
    run = suite.Suite(suite.Settings(refactor_base="no-such-rev-0000"))
    assert run.refactor_tree() is None
    assert run.refactor_tree() is None  # tried once per run
    assert len(run.notes) == 1 and "no-such-rev-0000" in run.notes[0]
    run.close()


def test_the_old_tree_is_one_worktree_for_the_run_removed_at_its_end() -> None:
    rev = refactor_base.REFACTOR_BASE
    ok = subprocess.run(["git", "cat-file", "-e", rev], cwd=peers.ROOT, capture_output=True)
    if ok.returncode != 0:
        pytest.skip(f"{rev} is not in this clone's history")
    run = suite.Suite(suite.Settings(refactor_base=rev))
    got = run.refactor_tree()
    assert got is not None and got[0] == rev
    tree = got[1]
    assert run.refactor_tree() == got  # the same tree for every row
    for script in ("clusterlab_hello.py", "ipc.py", "respawn.py"):
        assert (tree / "bench" / script).is_file()
    # before the refactor: no start methods as objects yet
    assert not (tree / "clusterlab" / "cluster" / "_spawn.py").exists()
    run.close()
    assert not tree.exists()


def test_old_hello_servers_and_the_paired_phases_they_join(tmp_path: Path) -> None:
    old = [refactor_base.hello_spec(2, tmp_path, p) for p in ("rr", "none")]
    assert [s.name for s in old] == [refactor_base.name("rr"), refactor_base.name("none")]
    assert all(s.env == {"PYTHONPATH": str(tmp_path)} for s in old)
    assert old[1].argv[1] == f"{tmp_path}/bench/clusterlab_hello.py" and old[1].argv[-1] == "none"
    run = suite.Suite(suite.Settings())
    today = [run._hello("rr"), run._hello("none")]
    groups = run._paired_groups(today + old)
    assert [(g.anchor, g.names, g.warm_anchor) for g in groups] == [
        ("clusterlab-rr", (refactor_base.name("rr"),), False),
        ("clusterlab-none", (refactor_base.name("none"),), True),  # idled through rr's phase
    ]
    # without rr (--only none) the SCHED_NONE phase still runs
    none_only = run._paired_groups([today[1], old[1]])
    assert [(g.anchor, g.names) for g in none_only] == [
        ("clusterlab-none", (refactor_base.name("none"),))
    ]
    assert run._paired_groups(today) == [suite.Paired("clusterlab-rr", (), 1.0, None)]


def _entry(samples: list[float], paired: tuple[str, list[float]] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"samples": samples, "median": sorted(samples)[len(samples) // 2]}
    if paired:
        out["paired"] = {"anchor": paired[0], "samples": paired[1]}
    out["min"], out["max"] = min(samples), max(samples)
    return out


def test_handoff_rows_judge_each_old_server_against_its_own_anchor() -> None:
    rr_key, none_key = "clusterlab-rr (paired)", "clusterlab-none (paired)"
    res = {
        rr_key: _entry([100.0, 100.0, 100.0]),
        refactor_base.name("rr"): _entry([98.0, 103, 101], (rr_key, [0.98, 1.03, 1.01])),
        none_key: _entry([50.0, 50, 50]),
        refactor_base.name("none"): _entry([55.0, 56, 54], (none_key, [1.1, 1.12, 1.08])),
    }
    run = suite.Suite(suite.Settings())
    run._refactor_handoff_rows(["rr", "none"], res, "dc97950")
    rr, none = run.rows
    assert rr.what.startswith("RR hand-off vs dc97950") and rr.met is True
    assert rr.ratio == pytest.approx(1 / 1.01) and "3 paired rounds" in rr.note
    assert none.what.startswith("SCHED_NONE hand-off vs dc97950")
    assert none.met is False and none.ratio == pytest.approx(1 / 1.1)


def test_micro_rows_pair_the_runs_of_a_round() -> None:
    runs = {
        "clusterlab": [{"roundtrips_per_s": x} for x in (100.0, 90, 110)],
        "clusterlab dc97950": [{"roundtrips_per_s": x} for x in (95.0, 100, 100)],
        "clusterlab (exec)": [{"kill_listening_ms": x} for x in (80.0, 90, 85)],
        "clusterlab (exec) dc97950": [{"kill_listening_ms": x} for x in (78.0, 80, 84)],
    }
    run = suite.Suite(suite.Settings())
    run._refactor_micro_row(
        "IPC round trips", runs, "clusterlab", "dc97950", "roundtrips_per_s", ""
    )
    ipc = run.rows[-1]
    ratios = sorted([100 / 95, 90 / 100, 110 / 100])
    assert ipc.ratio == pytest.approx(ratios[1]) and ipc.met is True
    assert "0.90–1.10 (3 alternated rounds)" in ipc.note
    run._refactor_micro_row(
        "respawn", runs, "clusterlab (exec)", "dc97950", "kill_listening_ms", "ms", True
    )
    respawn = run.rows[-1]
    assert respawn.met is False  # slower in every round: 80/78, 90/80, 85/84 all above 1
    assert suite.no_slower(suite.round_ratios([1.0], [1.0]), True) is True
    assert suite.no_slower(None) is None


def test_baseline_before_schedulers_is_untouched() -> None:
    assert "clusterlab-rr-base" in suite.PAIRED_WITH_RR
    assert refactor_base.name("rr") in suite.PAIRED_WITH_RR
    assert refactor_base.name("none") not in suite.PAIRED_WITH_RR  # paired with today's none
    assert policies.base_spec(2, Path("/x")).name == "clusterlab-rr-base"
