"""`clusterlab compare` and `clusterlab baseline` on synthetic runs: exit status, the outputs
(terminal, Markdown, JUnit XML, JSON) and bad input as one line with nothing written."""

import json
import re
from xml.etree import ElementTree as ET

import pytest
from compare_fixtures import summary

from clusterlab.cli import main

BASE = {("cpu", "rr", 1): [500, 510, 490, 505, 495], ("cpu", "rr", 2): [900, 910, 890, 905, 895]}
SLOW = {("cpu", "rr", 1): [400, 408, 392, 404, 396], ("cpu", "rr", 2): [720, 728, 712, 724, 716]}


@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, rps in (("base", BASE), ("same", BASE), ("slow", SLOW)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps(summary(rps)))
    return tmp_path


def test_the_same_numbers_compare_clean(runs, capsys):
    assert main(["compare", "base", "same/summary.json"]) == 0
    assert "no regression" in capsys.readouterr().out


def test_a_slowdown_fails_with_every_output_naming_it(runs, capsys):
    code = main(
        ["compare", "base", "slow", "--markdown", "c.md", "--junit", "c.xml", "--json", "c.json"]
    )
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


def test_thresholds_can_be_raised_per_metric(runs, capsys):
    assert (
        main(["compare", "base", "slow", "--threshold", "rps=30", "--threshold", "p50_ms=30"]) == 0
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
