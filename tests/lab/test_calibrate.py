"""Calibration: the noise of A/A pairs, thresholds max(floor, k × noise) per metric and group,
thresholds.json stored with the named baseline, compare using (and naming) them, refusal on
untrusted points, and `clusterlab calibrate` running its pairs through run_lab."""

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from compare_fixtures import edit_points, summary

from clusterlab.cli import main
from clusterlab.lab.ci import calibrate
from clusterlab.lab.ci.compare import CompareInputError, bootstrap_interval

pytestmark = pytest.mark.parallel_ok  # starts no load: runs beside the cluster tests

A1 = {("cpu", "rr", 1): [500, 510, 490, 505, 495], ("cpu", "rr", 2): [900, 910, 890, 905, 895]}
A2 = {("cpu", "rr", 1): [502, 498, 507, 493, 500], ("cpu", "rr", 2): [904, 896, 911, 889, 900]}
A3 = {("cpu", "rr", 1): [480, 520, 470, 530, 500], ("cpu", "rr", 2): [900, 905, 895, 902, 898]}
SLOW = {("cpu", "rr", 1): [470, 475, 465, 472, 468], ("cpu", "rr", 2): [830, 835, 825, 832, 828]}


def test_noise_is_the_threshold_an_interval_just_fits_inside():
    assert calibrate.noise((0.97, 1.02)) == pytest.approx(1 / 0.97 - 1)
    assert calibrate.noise((0.99, 1.04)) == pytest.approx(0.04)
    assert calibrate.noise((0.0, 1.0)) == float("inf")


def test_thresholds_are_k_times_the_largest_a_a_noise_with_a_floor():
    runs = [summary(A1), summary(A2), summary(A1), summary(A3)]
    result = calibrate.calibrate_from(runs, ["a1", "a1b", "a2", "a2b"], k=2, floor=0.05)
    assert result.ok, result.refused
    rps = result.data["metrics"]["rps"]
    noisy = max(
        calibrate.noise(bootstrap_interval(A1[("cpu", "rr", 1)], A2[("cpu", "rr", 1)])),
        calibrate.noise(bootstrap_interval(A1[("cpu", "rr", 1)], A3[("cpu", "rr", 1)])),
    )
    assert noisy > 0.025  # A3's 1-worker repeats spread ±6 %
    group = rps["groups"]["cpu/rr/1"]
    assert group["noise"] == pytest.approx(noisy, abs=1e-5)
    assert group["threshold"] == pytest.approx(2 * noisy, abs=1e-4) and group["pairs"] == 2
    assert rps["groups"]["cpu/rr/2"]["threshold"] == 0.05  # quiet: the floor
    assert rps["threshold"] == group["threshold"]  # the metric's: its largest group's
    assert result.data["metrics"]["failure_ratio"]["threshold"] == 0.05  # 0 vs 0: no noise
    assert result.data["rule"] == {
        "threshold": "max(floor, k * noise)",
        "k": 2,
        "floor": 0.05,
        "noise": calibrate.NOISE,
        "confidence": 0.95,
        "resamples": 10_000,
    }
    assert result.data["pairs"] == [["a1", "a1b"], ["a2", "a2b"]]
    assert calibrate.lookup(result.data)["rps"] == {
        "*": group["threshold"],
        "cpu/rr/1": group["threshold"],
        "cpu/rr/2": 0.05,
    }


def test_untrusted_points_refuse_calibration():
    busy = edit_points(summary(A2), lambda p: p["repeat"] == 1, other=70.0)
    result = calibrate.calibrate_from([summary(A1), busy], ["a", "b"])
    assert not result.ok
    assert "b cpu/rr/1 r1: outside CPU 70 % of a core (limit 25 %)" in result.refused
    legacy = calibrate.calibrate_from([summary(A1, legacy=True), summary(A2)], ["a", "b"])
    assert any("no saturation verdict recorded (summary v2)" in r for r in legacy.refused)


def test_too_few_repeats_calibrate_nothing_and_odd_runs_are_bad_input():
    few = summary({("cpu", "rr", 1): [500, 510]})
    result = calibrate.calibrate_from([few, few], ["a", "b"])
    assert not result.ok and result.data["metrics"] == {}
    assert result.refused[0].startswith("no metric could be calibrated: rps cpu/rr/1: insuff")
    with pytest.raises(CompareInputError, match="A/A pairs"):
        calibrate.calibrate_from([few], ["a"])


@pytest.fixture
def recorded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLUSTERLAB_BASELINES", str(tmp_path / "store"))
    for name, rps in (("a1", A1), ("a1b", A2), ("a2", A1), ("a2b", A3), ("slow", SLOW)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps(summary(rps)))
    return tmp_path


def test_calibrate_saves_the_first_run_with_thresholds_and_compare_uses_them(recorded, capsys):
    assert main(["calibrate", "--name", "main", "--from", "a1", "a1b", "a2", "a2b"]) == 0
    out = capsys.readouterr().out
    assert "baseline main saved in" in out and "with thresholds.json (from a1)" in out
    assert re.search(r"\nrps +cpu/rr/1 +0.976–1.024, 0.940–1.061 +6.4% +12.8%\n", out)
    folder = recorded / "store" / "main"
    data = json.loads((folder / "thresholds.json").read_text())
    assert data["schema"] == "clusterlab.lab.thresholds" and data["scenario"] == "t"
    saved = json.loads((folder / "baseline.json").read_text())
    assert saved["source"] == "a1"
    # SLOW is 6 % down at 1 worker (inside the noisy group's 12.8 %, capped at the 10 %
    # default), 8 % at 2 (beyond 5 %)
    assert main(["compare", "main", "slow", "--json", "c.json"]) == 1
    out = capsys.readouterr().out
    assert f"thresholds (calibrated: {folder / 'thresholds.json'}, 2 A/A pair(s) of" in out
    rows = json.loads((recorded / "c.json").read_text())["compare"]["rows"]
    rps = {r["workers"]: r for r in rows if r["metric"] == "rps"}
    assert rps[2]["threshold_source"] == "calibrated" and rps[2]["verdict"] == "worse"
    assert data["metrics"]["rps"]["groups"]["cpu/rr/1"]["threshold"] > 0.10
    assert (rps[1]["threshold"], rps[1]["threshold_source"]) == (0.10, "capped")
    assert rps[1]["verdict"] in ("unchanged", "inconclusive")
    # an explicit --threshold still wins
    argv = ["compare", "main", "slow", "--threshold", "rps=20", "--threshold", "p50_ms=20"]
    assert main(argv) == 0
    assert "rps 20.0 % --threshold" in capsys.readouterr().out
    assert main(["baseline", "show", "main"]) == 0
    assert "calibrated thresholds (thresholds.json, 2 A/A pair(s)" in capsys.readouterr().out


def test_a_refused_calibration_saves_nothing_and_exits_3(recorded, capsys):
    busy = edit_points(summary(A2), lambda p: True, verdict="generator")
    (recorded / "busy.json").write_text(json.dumps(busy))
    assert main(["calibrate", "--name", "main", "--from", "a1", "busy.json"]) == 3
    err = capsys.readouterr().err
    assert "refused: busy.json cpu/rr/1 r0: not target-bound: verdict 'generator'" in err
    assert "INCONCLUSIVE: nothing saved" in err
    assert not (recorded / "store" / "main").exists()


def test_bad_calibrate_input_is_exit_2(recorded, capsys):
    assert main(["calibrate", "--name", "../x", "--from", "a1", "a1b"]) == 2
    assert main(["calibrate", "--name", "main", "--from", "a1"]) == 2
    assert main(["calibrate", "--name", "main"]) == 2
    assert main(["calibrate", "--name", "main", "--k", "0", "--from", "a1", "a1b"]) == 2
    assert not (recorded / "store").exists()


def test_a_broken_thresholds_file_is_bad_input(recorded, capsys):
    assert main(["calibrate", "--name", "main", "--from", "a1", "a1b"]) == 0
    (recorded / "store" / "main" / "thresholds.json").write_text('{"schema": "x"}')
    capsys.readouterr()
    assert main(["compare", "main", "slow"]) == 2
    assert "thresholds.json: expected a clusterlab thresholds.json" in capsys.readouterr().err


def test_saving_a_new_baseline_keeps_thresholds_only_for_the_same_scenario_and_machine(
    recorded, capsys
):
    assert main(["calibrate", "--name", "main", "--from", "a1", "a1b"]) == 0
    assert main(["baseline", "save", "main", "a2"]) == 0
    assert "calibrated thresholds kept" in capsys.readouterr().out
    assert (recorded / "store" / "main" / "thresholds.json").is_file()
    (recorded / "other").mkdir()
    (recorded / "other" / "summary.json").write_text(json.dumps(summary(A1, cpu_model="Other")))
    assert main(["baseline", "save", "main", "other"]) == 0
    assert not (recorded / "store" / "main" / "thresholds.json").exists()


def test_calibrate_runs_its_pairs_through_run_lab(recorded, monkeypatch, capsys):
    """The scenario is run 2 × pairs times (A, A' per pair) into --out; the first is saved."""
    from clusterlab.lab import pipeline

    calls = []

    def fake_run_lab(scenario, out_dir, progress):
        calls.append(out_dir.name)
        rps = [A1, A2, A1, A3][len(calls) - 1]
        out_dir.mkdir()
        (out_dir / "summary.json").write_text(json.dumps(summary(rps)))
        outcome = SimpleNamespace(out_dir=out_dir, interrupted=False, failed=0)
        return SimpleNamespace(out_dir=out_dir, outcome=outcome)

    monkeypatch.setattr(pipeline, "run_lab", fake_run_lab)
    scenario = Path(__file__).parents[2] / "scenarios" / "ci.toml"
    argv = ["calibrate", str(scenario), "--name", "ci", "--out", "cal", "-q"]
    assert main(argv) == 0
    assert calls == ["a1", "a1-again", "a2", "a2-again"]
    saved = json.loads((recorded / "store" / "ci" / "baseline.json").read_text())
    assert saved["source"] == "cal/a1"
    assert main(argv) == 2  # --out exists
