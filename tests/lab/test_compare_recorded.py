"""compare and calibrate on real runs recorded by `make trust-compare TRUST_COMPARE_ARGS=--quick`
on the project's 2-core machine (summary v3, `/cpu?ms=2`, rr, 1 worker, 5 repeats of 1.5 s):
a1 and a1-again are the calibration pair (a1 the baseline), aa-1 another A/A run, plus30-1 and
plus10-1 the endpoint at 2.6 and 2.2 ms, burner-1 an A/A run beside a process spinning on a core
(tests/lab/data/compare/trust-quick). Every outcome, from recorded data."""

import json
import shutil
from pathlib import Path

import pytest

from clusterlab.cli import main
from clusterlab.lab.ci import calibrate, outputs
from clusterlab.lab.ci.compare import compare, load_summary

pytestmark = pytest.mark.parallel_ok  # starts no load: runs beside the cluster tests

DATA = Path(__file__).parent / "data" / "compare" / "trust-quick"


def run(name):
    return load_summary(DATA / f"{name}.json")


@pytest.fixture(scope="module")
def thresholds():
    result = calibrate.calibrate_from([run("a1"), run("a1-again")], ["a1", "a1-again"])
    assert result.ok, result.refused
    return result.data


def test_the_quiet_pair_calibrates_tight_thresholds(thresholds):
    metrics = thresholds["metrics"]
    assert metrics["rps"]["noise"] == pytest.approx(0.019, abs=0.001)
    assert metrics["rps"]["threshold"] == 0.05  # 2 × 1.9 % is under the floor
    assert metrics["p99_ms"]["threshold"] == pytest.approx(0.064, abs=0.001)


@pytest.mark.parametrize(
    ("name", "outcome", "rps_verdict"),
    [
        ("aa-1", "unchanged", "unchanged"),
        ("plus30-1", "regression", "worse"),
        ("plus10-1", "regression", "worse"),
        ("burner-1", "inconclusive", "untrusted"),
    ],
)
def test_each_recorded_run_gets_its_outcome(thresholds, name, outcome, rps_verdict):
    result = compare(
        run("a1"), run(name), calibrated=calibrate.lookup(thresholds), calibration="recorded"
    )
    assert result.outcome == outcome, outputs.terminal(result)
    rps = next(r for r in result.rows if r.metric == "rps")
    assert rps.verdict == rps_verdict and rps.threshold_source == "calibrated"


def test_the_burner_run_is_untrusted_for_the_machine_and_outside_cpu(thresholds):
    result = compare(run("a1"), run("burner-1"), calibrated=calibrate.lookup(thresholds))
    assert {d.run for d in result.untrusted} == {"current"} and len(result.untrusted) == 5
    assert all(d.kinds == ("verdict machine", "outside CPU") for d in result.untrusted)
    rps = next(r for r in result.rows if r.metric == "rps")
    assert rps.note.endswith("the interval alone says worse")  # slower, but not the code's fault


def test_the_ten_percent_run_is_beyond_even_the_default_threshold():
    rps = next(r for r in compare(run("a1"), run("plus10-1")).rows if r.metric == "rps")
    assert rps.threshold == 0.10 and rps.interval[1] < 1 / 1.1 and rps.verdict == "worse"


def test_through_the_command_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLUSTERLAB_BASELINES", str(tmp_path / "store"))
    for file in DATA.iterdir():
        shutil.copy(file, tmp_path / file.name)
    assert main(["calibrate", "--name", "trust", "--from", "a1.json", "a1-again.json"]) == 0
    codes = {
        name: main(["compare", "trust", f"{name}.json", "--json", f"{name}.out.json", "-q"])
        for name in ("aa-1", "plus30-1", "plus10-1", "burner-1")
    }
    assert codes == {"aa-1": 0, "plus30-1": 1, "plus10-1": 1, "burner-1": 3}
    burner = json.loads((tmp_path / "burner-1.out.json").read_text())["compare"]
    assert burner["calibration"].startswith(str(tmp_path / "store" / "trust" / "thresholds.json"))
    assert burner["headline"].startswith("INCONCLUSIVE: 5 gated row(s) could not be judged")
