"""Self-validation on a real (tiny) run: the gates of `clusterlab run` pass and fail as written,
an A/A comparison (the same target and load measured twice) shows no regression, and an A/B
comparison where the endpoint's CPU cost is raised 30 % is flagged (skipped, saying why, when other
processes took a core during the run: then the repeats cannot prove anything).

One run serves all three: workloads a1 and a2 are the same `/cpu?ms=2` load, b is
`/cpu?ms=2.6`; all are interleaved over 4 repeats on one target per repeat, then split into
three single-workload summaries (renamed `cpu`) and compared with the real CLI. 4 + 4 repeats
need alpha 0.05 (the smallest attainable p is 2/70 = 0.029); the `ci` scenario uses 5 and 0.01.
"""

import json
import subprocess
import sys
from xml.etree import ElementTree as ET

import pytest

from clusterlab.cli import main
from clusterlab.lab.ci.compare import NOISY_OTHER_CPU, other_cpu

SCENARIO = """
name = "ab"
[target]
kind = "builtin"
[sweep]
workers = [2]
repeats = 4
[workloads]
a1 = { "/cpu?ms=2" = 1 }
a2 = { "/cpu?ms=2" = 1 }
b = { "/cpu?ms=2.6" = 1 }
[load]
users = 8
warmup = 0.5
duration = 1.5
[gates]
failure_ratio = "< 1%"
"rps{workload=b}" = "> 1e9"
"""

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ab_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ab")
    (root / "ab.toml").write_text(SCENARIO)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "clusterlab.cli",
            "run",
            root / "ab.toml",
            "--out",
            root / "out",
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=150,
    )
    summary = json.loads((root / "out" / "summary.json").read_text())
    for workload in ("a1", "a2", "b"):
        part = {
            **summary,
            "points": [
                {**p, "workload": "cpu"} for p in summary["points"] if p["workload"] == workload
            ],
        }
        (root / f"{workload}.json").write_text(json.dumps(part))
    return done, root


def test_run_exits_1_when_a_gate_fails_and_writes_the_gate_outputs(ab_run):
    done, root = ab_run
    assert done.returncode == 1, done.stderr
    assert "FAILED  rps{workload=b} > 1e9" in done.stderr
    cases = ET.parse(root / "out" / "gates.xml").getroot().iter("testcase")
    outcome = {c.get("name"): c.find("failure") is None for c in cases}
    assert outcome == {"failure_ratio < 1%": True, "rps{workload=b} > 1e9": False}
    assert "FAILED" in (root / "out" / "gates.md").read_text()


def test_a_a_shows_no_regression(ab_run, capsys):
    _, root = ab_run
    assert main(["compare", str(root / "a1.json"), str(root / "a2.json"), "--alpha", "0.05"]) == 0
    assert "no regression" in capsys.readouterr().out


def test_a_b_with_30_percent_more_cpu_per_request_is_flagged(ab_run, capsys):
    _, root = ab_run
    md = root / "ab.md"
    code = main(
        [
            "compare",
            str(root / "a1.json"),
            str(root / "b.json"),
            "--alpha",
            "0.05",
            "--markdown",
            str(md),
        ]
    )
    out = capsys.readouterr().out
    noise = other_cpu(json.loads((root / "b.json").read_text()))
    if code == 0 and noise > NOISY_OTHER_CPU:
        # another process took a core of this 2-core machine during the run: declining to call a
        # change significant is then the right answer, not a failure of the detector
        pytest.skip(f"machine busy ({noise:.0f} % of a core used by others): {out[-300:]}")
    assert code == 1, out
    assert "REGRESSION" in md.read_text() and "rps cpu/rr/2" in md.read_text()
