"""`clusterlab compare` and `clusterlab baseline` on synthetic runs: exit status (0 unchanged, 1
regression, 3 inconclusive, 2 bad input), the outputs (terminal, Markdown, JUnit XML, JSON) for
each outcome, and bad input as one line with nothing written."""

import json
import re
from xml.etree import ElementTree as ET

import pytest
from compare_fixtures import edit_points, summary

from clusterlab.cli import main

pytestmark = pytest.mark.parallel_ok  # starts no load: runs beside the cluster tests

BASE = {("cpu", "rr", 1): [500, 510, 490, 505, 495], ("cpu", "rr", 2): [900, 910, 890, 905, 895]}
SLOW = {("cpu", "rr", 1): [400, 408, 392, 404, 396], ("cpu", "rr", 2): [720, 728, 712, 724, 716]}


OUTPUTS = ["--markdown", "c.md", "--junit", "c.xml", "--json", "c.json"]


@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    busy = edit_points(summary(BASE), lambda p: p["workers"] == 2 and p["repeat"] == 3, other=80.0)
    for name, data in (
        ("base", summary(BASE)),
        ("same", summary(BASE)),
        ("slow", summary(SLOW)),
        ("busy", busy),
        ("v2", summary(BASE, legacy=True)),
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps(data))
    return tmp_path


def test_the_same_numbers_compare_clean(runs, capsys):
    assert main(["compare", "base", "same/summary.json"]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith("no regression: all 11 gated rows judged (11 unchanged, 0 better)")
    assert "95 % interval" in out and "10,000 resamples" in out


def test_untrusted_points_make_it_inconclusive_exit_3_in_every_output(runs, capsys):
    assert main(["compare", "base", "busy", *OUTPUTS]) == 3
    out = capsys.readouterr().out
    headline = out.rstrip().splitlines()[-1]
    assert headline.startswith("INCONCLUSIVE: 6 gated row(s) could not be judged — untrusted")
    assert "rps cpu/rr/2" in headline and "no regression" not in out
    assert "untrusted: current cpu/rr/2 r3: outside CPU 80 % of a core (limit 25 %)" in out
    md = (runs / "c.md").read_text()
    assert md.startswith("## clusterlab compare: INCONCLUSIVE") and "(exit 3)" in md
    assert "* current cpu/rr/2 r3: outside CPU 80 % of a core (limit 25 %)" in md
    suite = ET.parse(runs / "c.xml").getroot().find("testsuite")
    assert (suite.get("failures"), suite.get("errors"), suite.get("tests")) == ("0", "6", "11")
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["outcome"] == "inconclusive" and props["exit_status"] == "3"
    errors = [c for c in suite.findall("testcase") if c.find("error") is not None]
    assert {c.get("classname") for c in errors} == {"compare.cpu/rr/2"}
    assert all(c.find("error").get("type") == "inconclusive" for c in errors)
    data = json.loads((runs / "c.json").read_text())["compare"]
    assert (data["outcome"], data["exit_status"], data["regression"]) == ("inconclusive", 3, False)
    assert data["untrusted_points"] == [
        {
            "run": "current",
            "workload": "cpu",
            "policy": "rr",
            "workers": 2,
            "repeat": 3,
            "reasons": ["outside CPU 80 % of a core (limit 25 %)"],
        }
    ]
    assert data["interval"]["resamples"] == 10_000 and data["interval"]["confidence"] == 0.95


def test_the_outside_cpu_limit_is_an_option(runs, capsys):
    assert main(["compare", "base", "busy", "--max-other-cpu", "90"]) == 0


def test_a_version_2_summary_is_read_but_never_trusted(runs, capsys):
    assert main(["compare", "v2", "same"]) == 3
    out = capsys.readouterr().out
    assert (
        "baseline cpu/rr/1 r0–r4, cpu/rr/2 r0–r4: no saturation verdict recorded (summary v2): "
        "record the baseline again"
    ) in out


def test_a_slowdown_fails_with_every_output_naming_it(runs, capsys):
    code = main(["compare", "base", "slow", *OUTPUTS])
    assert code == 1
    out = capsys.readouterr().out
    assert "REGRESSION" in out and "rps" in out
    md = (runs / "c.md").read_text()
    assert md.startswith("## clusterlab compare: REGRESSION")
    assert re.search(r"\| \*\*\+\*\* +\| \*\*rps ↑\*\* +\| \*\*cpu/rr/1\*\* +\|", md)
    suite = ET.parse(runs / "c.xml").getroot().find("testsuite")
    cases = suite.findall("testcase")
    assert len(cases) == len(json.loads((runs / "c.json").read_text())["compare"]["rows"])
    failed = {(c.get("classname"), c.get("name")) for c in cases if c.find("failure") is not None}
    assert ("compare.cpu/rr/1", "rps") in failed and ("compare.cpu/rr/2", "p50_ms") in failed
    data = json.loads((runs / "c.json").read_text())["compare"]
    assert data["regression"] and data["test"].startswith("Mann-Whitney")
    assert (data["outcome"], data["exit_status"]) == ("regression", 1)
    rps = next(r for r in data["rows"] if r["metric"] == "rps" and r["workers"] == 1)
    assert rps["interval"][1] < 1 / 1.1 and rps["verdict"] == "worse"


def test_a_regression_wins_over_inconclusive(runs, capsys):
    busy_slow = edit_points(summary(SLOW), lambda p: p["workers"] == 2, other=80.0)
    (runs / "busy_slow.json").write_text(json.dumps(busy_slow))
    assert main(["compare", "base", "busy_slow.json"]) == 1
    headline = capsys.readouterr().out.rstrip().splitlines()[-1]
    assert headline.startswith("REGRESSION: 2 metric(s) got worse: rps cpu/rr/1, p50_ms cpu/rr/1")
    assert headline.endswith("; 6 more gated row(s) could not be judged")


def test_thresholds_can_be_raised_per_metric_and_say_so(runs, capsys):
    argv = ["compare", "base", "slow", "--threshold", "rps=30", "--threshold", "p50_ms=30"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "thresholds: rps 30.0 % --threshold, p50_ms 30.0 % --threshold, p99_ms 10.0 %" in out


def test_a_threshold_at_the_change_itself_is_inconclusive(runs, capsys):
    # SLOW is 1/1.25 of BASE: every changed row's interval straddles the 25 % bound
    assert main(["compare", "base", "slow", "--threshold", "25"]) == 3
    assert (
        "interval across the threshold: rps cpu/rr/1, p50_ms cpu/rr/1, rps cpu/rr/2, "
        "p50_ms cpu/rr/2" in capsys.readouterr().out
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["compare", "base", "missing"],
        ["compare", "base", "slow", "--threshold", "x=5"],
        ["compare", "base", "slow", "--alpha", "2"],
        ["baseline", "show", "nothing"],
        ["baseline", "save", "../bad", "base"],
    ],
)
def test_bad_input_is_one_line_and_exit_2(runs, capsys, argv):
    assert main([*argv, "--markdown", "x.md"] if argv[0] == "compare" else argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("clusterlab: ")
    assert not (runs / "x.md").exists()


def test_a_bad_summary_is_bad_input(runs, capsys):
    (runs / "broken.json").write_text('{"schema": "other"}')
    assert main(["compare", "base", "broken.json"]) == 2
    assert "broken.json" in capsys.readouterr().err
