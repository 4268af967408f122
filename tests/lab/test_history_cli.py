"""``clusterlab history add | show | check`` on histories made from a recorded run: a step found
at its run with its commits, an A/A history without change points, a short history and an
untrusted newest run inconclusive, a pull request's run judged without being added, and bad input
refused in one line with the history untouched."""

import json
import shutil

import pytest
from history_fixtures import factors, recorded, scaled, write_runs

from clusterlab.cli import main
from clusterlab.lab.ci import history

pytestmark = pytest.mark.parallel_ok  # starts no load: runs beside the cluster tests


@pytest.fixture
def db(tmp_path):
    return tmp_path / "history.sqlite"


def fill(db, folder, values, cpu_follows=False):
    """The runs written and added (through the API: ``add`` is tested once below)."""
    paths = write_runs(folder, values, cpu_follows=cpu_follows)
    for path in paths:
        history.add(db, history.record(json.loads(path.read_text()), str(path)))
    return paths


def test_add_appends_a_run_directory_and_says_where(db, tmp_path, capsys):
    (run,) = write_runs(tmp_path / "runs", [1.0])

    assert (
        main(
            [
                "history",
                "add",
                str(run.parent),
                "--db",
                str(db),
                "--scenario",
                "trust",
                "--revision",
                "abc123",
                "--branch",
                "main",
            ]
        )
        == 0
    )
    assert main(["history", "add", str(run.parent), "--db", str(db)]) == 0

    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{run.parent}: added as run 1 of trust@")
    assert out[1].startswith(f"{run.parent}: already in the history as run 1")
    data = history.read(db)
    assert set(data["revision"]) == {"abc123"} and set(data["branch"]) == {"main"}


def runs_in(db):
    return int(history.read(db)["run"].nunique())


def test_a_step_after_sixteen_runs_is_a_regression_at_run_17_with_its_commits(db, tmp_path, capsys):
    fill(db, tmp_path / "runs", factors([(16, 1.0), (8, 0.87)], noise=0.02, seed=1))
    capsys.readouterr()

    status = main(
        [
            "history",
            "check",
            "--db",
            str(db),
            "--json",
            str(tmp_path / "c.json"),
            "--markdown",
            str(tmp_path / "c.md"),
            "--plot-dir",
            str(tmp_path / "plots"),
        ]
    )

    out = capsys.readouterr().out
    assert status == 1
    assert out.startswith("REGRESSION over 24 runs of trust") and "rps_per_cpu cpu/rr/1" in out
    checked = json.loads((tmp_path / "c.json").read_text())
    series = {s["metric"]: s for s in checked["series"]}
    (change,) = series["rps_per_cpu"]["changes"]
    assert change["kind"] == "regression" and abs(change["run"] - 17) <= 1
    assert change["commits"] == f"c{change['run'] - 2:03d}..c{change['run'] - 1:03d}"
    assert change["change"] == pytest.approx(-0.13, abs=0.03)
    assert series["rps_per_cpu"]["gating"] and not series["rps"]["gating"]
    assert series["p50_ms"]["changes"][0]["kind"] == "regression"  # lower is better: it rose
    assert "### clusterlab history: regression" in (tmp_path / "c.md").read_text()
    assert (tmp_path / "plots" / "rps_per_cpu.png").stat().st_size > 0


def test_an_a_a_history_of_sixteen_runs_shows_no_change_point(db, tmp_path, capsys):
    fill(db, tmp_path / "runs", factors([(16, 1.0)], noise=0.02, seed=2))
    capsys.readouterr()

    status = main(["history", "check", "--db", str(db), "--json", str(tmp_path / "c.json")])

    assert status == 0, capsys.readouterr().out
    checked = json.loads((tmp_path / "c.json").read_text())
    assert checked["outcome"] == "unchanged"
    assert [s["changes"] for s in checked["series"]] == [[]] * len(checked["series"])


def test_a_machine_that_gives_less_cpu_changes_rps_but_gates_only_with_absolute(
    db, tmp_path, capsys
):
    """Throughput and the workers' CPU fall together (a busier or slower-share machine of the same
    kind): rps shows the step, the CPU-normalised throughput does not, and only --absolute lets
    rps gate."""
    fill(db, tmp_path / "runs", factors([(16, 1.0), (8, 0.7)], seed=12), cpu_follows=True)
    capsys.readouterr()

    assert main(["history", "check", "--db", str(db), "--json", str(tmp_path / "c.json")]) == 0
    series = {s["metric"]: s for s in json.loads((tmp_path / "c.json").read_text())["series"]}
    assert series["rps_per_cpu"]["changes"] == []
    assert [c["run"] for c in series["rps"]["changes"]] == [17]
    assert main(["history", "check", "--db", str(db), "--absolute", "-q"]) == 1
    assert "rps cpu/rr/1" in capsys.readouterr().out.splitlines()[-1]


def test_an_old_regression_is_listed_but_no_longer_fails(db, tmp_path, capsys):
    fill(db, tmp_path / "runs", factors([(12, 1.0), (14, 0.85)], noise=0.01, seed=3))
    capsys.readouterr()

    status = main(["history", "check", "--db", str(db), "--recent", "10"])

    out = capsys.readouterr().out
    assert status == 0
    assert "older change point(s) listed" in out and "regression -1" in out


def test_a_short_history_is_inconclusive(db, tmp_path, capsys):
    fill(db, tmp_path / "runs", factors([(6, 1.0)], seed=4))
    capsys.readouterr()

    status = main(["history", "check", "--db", str(db), "-q"])

    out = capsys.readouterr().out
    assert status == 3
    assert out.startswith("INCONCLUSIVE") and "too short" in out


def test_an_untrusted_newest_run_is_inconclusive(db, tmp_path, capsys):
    fill(db, tmp_path / "runs", factors([(12, 1.0)], seed=5))
    burner = scaled(recorded("burner-1"), 30, 1.0)
    path = tmp_path / "burner.json"
    path.write_text(json.dumps(burner))
    assert main(["history", "add", str(path), "--db", str(db)]) == 0
    capsys.readouterr()

    status = main(["history", "check", "--db", str(db), "-q"])

    assert status == 3
    assert "newest untrusted" in capsys.readouterr().out


def test_a_pull_requests_run_is_judged_as_the_newest_without_being_added(db, tmp_path, capsys):
    fill(db, tmp_path / "runs", factors([(15, 1.0)], noise=0.01, seed=6))
    slow = tmp_path / "pr.json"
    slow.write_text(json.dumps(scaled(recorded("a1"), 40, 0.7, revision="pr1")))
    before = db.read_bytes()
    capsys.readouterr()

    status = main(["history", "check", "--db", str(db), "--with", str(slow)])

    out = capsys.readouterr().out
    assert status == 1
    assert "rps_per_cpu cpu/rr/1" in out.splitlines()[0] and "REGRESSION" in out
    assert db.read_bytes() == before
    same = tmp_path / "same.json"
    same.write_text(json.dumps(scaled(recorded("a1"), 40, 1.0, revision="pr2")))
    assert main(["history", "check", "--db", str(db), "--with", str(same), "-q"]) == 0


def test_show_lists_the_series_and_a_metrics_runs_with_change_points_and_a_plot(
    db, tmp_path, capsys
):
    fill(db, tmp_path / "runs", factors([(10, 1.0), (6, 1.2)], noise=0.01, seed=7))
    capsys.readouterr()

    assert main(["history", "show", "--db", str(db)]) == 0
    listed = capsys.readouterr().out
    assert "trust@" in listed and "AMD EPYC" in listed
    plot = tmp_path / "rps.png"
    assert main(["history", "show", "rps_per_cpu", "--db", str(db), "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "c015" in out and "improvement +2" in out and "at run 11 (c009..c010" in out
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_another_scenarios_run_is_refused_in_one_line_and_nothing_is_added(db, tmp_path, capsys):
    fill(db, tmp_path / "runs", factors([(3, 1.0)], seed=8))
    other = scaled(recorded("a1"), 9, 1.0)
    other["scenario"]["name"] = "nightly"
    path = tmp_path / "nightly.json"
    path.write_text(json.dumps(other))
    before = db.read_bytes()
    capsys.readouterr()

    assert main(["history", "add", str(path), "--db", str(db), "--scenario", "trust"]) == 2
    assert (
        main(["history", "check", "--db", str(db), "--with", str(path), "--scenario", "trust"]) == 2
    )

    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2
    assert all("expected a run of scenario 'trust', got one of 'nightly'" in e for e in err)
    assert db.read_bytes() == before


@pytest.mark.parametrize("action", ["check", "show"])
def test_a_missing_history_is_one_line_and_exit_2(tmp_path, capsys, action):
    status = main(["history", action, "--db", str(tmp_path / "none.sqlite")])

    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and "no such file" in err
    assert not (tmp_path / "none.sqlite").exists()


def test_a_corrupt_history_is_one_line_and_exit_2_and_stays_as_it_was(db, tmp_path, capsys):
    fill(db, tmp_path / "runs", factors([(3, 1.0)], seed=9))
    data = bytearray(db.read_bytes())
    data[:16] = b"garbage garbage!"
    db.write_bytes(bytes(data))
    run = tmp_path / "runs" / "run000"
    capsys.readouterr()

    for argv in (["add", str(run)], ["check"], ["show", "rps"]):
        assert main(["history", *argv, "--db", str(db)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all("expected a clusterlab history" in e for e in err)
    assert db.read_bytes() == bytes(data)


def test_bad_options_and_runs_are_one_line_and_exit_2(db, tmp_path, capsys):
    fill(db, tmp_path / "runs", factors([(3, 1.0)], seed=10))
    shutil.copy(tmp_path / "runs" / "run000" / "summary.json", tmp_path / "bad.json")
    (tmp_path / "bad.json").write_text("{not json")
    capsys.readouterr()

    assert main(["history", "check", "--db", str(db), "--alpha", "2"]) == 2
    assert main(["history", "add", str(tmp_path / "bad.json"), "--db", str(db)]) == 2
    assert main(["history", "show", "nonsense", "--db", str(db)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3
    assert "--alpha" in err[0] and "expected a clusterlab summary.json" in err[1]
    assert "expected a metric of this series" in err[2]
    assert runs_in(db) == 3


def test_a_history_of_one_untrusted_run_is_inconclusive_and_still_drawn(db, tmp_path, capsys):
    # a CI job's first run on a busy machine: the history's only run is untrusted
    burner = tmp_path / "burner.json"
    burner.write_text(json.dumps(scaled(recorded("burner-1"), 1, 1.0)))
    assert main(["history", "add", str(burner), "--db", str(db)]) == 0
    capsys.readouterr()

    plots = tmp_path / "plots"
    status = main(["history", "check", "--db", str(db), "-q", "--plot-dir", str(plots)])

    assert status == 3, capsys.readouterr().out
    drawn = sorted(plots.glob("*.png"))
    assert drawn and all(p.stat().st_size > 0 for p in drawn)
