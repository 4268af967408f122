"""A corpus of bad scenario files (bad_scenarios/*.toml, each naming on its first line the
message it must get): `clusterlab run FILE` prints one clear line on stderr, exits 2, and
writes nothing.

The long version runs the installed `clusterlab` command for every file; the short one calls
the same `main()` in this process (a process start with the lab's imports is over a second)
and the command for one file.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from clusterlab import cli

from .support import STRESS

TARGET = "bad scenario files"
CORPUS = sorted((Path(__file__).parent / "bad_scenarios").glob("*.toml"))


def expected(path: Path) -> str:
    first = path.read_bytes().splitlines()[0].decode()
    assert first.startswith("# expect: "), f"{path.name}: the first line must say what to expect"
    return first.removeprefix("# expect: ")


def clusterlab_run(path: Path, out: Path, cwd: Path) -> tuple[int, str, str]:
    exe = shutil.which("clusterlab", path=str(Path(sys.executable).parent)) or "clusterlab"
    done = subprocess.run(
        [exe, "run", str(path), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )
    return done.returncode, done.stdout, done.stderr


def main_run(path: Path, out: Path, capsys, monkeypatch) -> tuple[int, str, str]:
    def must_not_run(*args, **kw):
        raise AssertionError(f"{path.name} was accepted and run")

    monkeypatch.setattr("clusterlab.lab.running.runner.run_scenario", must_not_run)
    monkeypatch.setattr("clusterlab.cli.signal.signal", lambda *args: None)
    capsys.readouterr()
    try:
        status = cli.main(["run", str(path), "--out", str(out)])
    except SystemExit as exc:
        status = exc.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_the_corpus_covers_the_targets_cases():
    names = {p.stem for p in CORPUS}
    for case in (
        "bad_toml",
        "users_wrong_type",
        "unknown_top_level_key",
        "unknown_load_key",
        "users_negative",
        "missing_app",
        "faults_not_a_list",
        "faults_unknown_kind",
        "respawn_unknown_policy",
    ):
        assert case in names


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_bad_scenario_is_one_line_exit_2_and_nothing_written(
    path, tmp_path, capsys, monkeypatch, figure
):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    out = tmp_path / "out"
    if STRESS or path == CORPUS[0]:
        status, stdout, stderr = clusterlab_run(path, out, cwd)
        how = "clusterlab run"
    else:
        status, stdout, stderr = main_run(path, out, capsys, monkeypatch)
        how = "cli.main"
    lines = stderr.splitlines()
    assert status == 2, (status, stderr)
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert lines[0].startswith(f"clusterlab: {path}: "), lines[0]
    assert expected(path) in lines[0], lines[0]
    assert stdout == ""
    assert not out.exists(), "the output directory was created"
    assert list(cwd.iterdir()) == [], "something was written in the working directory"
    figure(
        TARGET,
        f"{path.stem} ({how}): exit 2, {lines[0].split(': ', 2)[-1]}",
        group="bad scenario files",
    )
