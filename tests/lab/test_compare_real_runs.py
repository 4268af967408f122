"""Self-validation on a real (tiny) run: the gates of `clusterlab run` pass and fail as written,
an A/A comparison (the same target and load measured twice) shows no change, and an A/B
comparison where the endpoint's CPU cost is raised 30 % is flagged.

One run serves all three: workloads a1 and a2 are the same `/cpu?ms=2` load, b is
`/cpu?ms=2.6`, run in the order a1, b, a2 in each of REPEATS repeats (one target per repeat),
on one worker: its core is the limit (verdict "target"), the only points `compare` trusts.

The A/A verdict must not depend on luck: `compare` judges on a seeded bootstrap interval of the
ratio of medians (the same data always give the same verdict), and the two sides are a
crossover: side A takes a1 in even repeats and a2 in odd ones, side A' the other, so each side
has one sample per repeat, half from the first position of a repeat and half from the last. A
position effect (a target's first point, drift within a repeat) cannot then separate them: an
A/A interval lies wholly beyond the 10 % threshold only if the repeats scatter far more than
any run the suite has seen.

The A/B check fails, rather than skips, when the 30 % is not flagged, whatever the reason (an
interval across the threshold, points untrusted because other processes took the CPU): a
machine too busy to tell 30 % apart is a result to see, not to hide. The failure says why. When
every untrusted point was disturbed from outside the run (the lab measured other processes above
its limit: 29–67 % of a core in clean-clone passes on a noisy VM), compare rightly refuses to
judge: the test then asserts that refusal (untrusted, inconclusive, exit 3) and that the interval
still lies wholly beyond the threshold — the 30 % was seen.
"""

import json
import subprocess
import sys
from xml.etree import ElementTree as ET

import pytest

from clusterlab.cli import main
from clusterlab.lab.ci.compare import compare

REPEATS = 6
SCENARIO = f"""
name = "ab"
[target]
kind = "builtin"
[sweep]
workers = [1]                   # one worker on its core, locust on the other: target-bound
repeats = {REPEATS}
[workloads]
a1 = {{ "/cpu?ms=2" = 1 }}
b = {{ "/cpu?ms=2.6" = 1 }}
a2 = {{ "/cpu?ms=2" = 1 }}
[load]
users = 8
warmup = 0.5
duration = 1.5
processes = 1
[gates]
failure_ratio = "< 1%"
"rps{{workload=b}}" = "> 1e9"
"""
SIDES = {
    "A": {r: "a1" if r % 2 == 0 else "a2" for r in range(REPEATS)},
    "A2": {r: "a2" if r % 2 == 0 else "a1" for r in range(REPEATS)},
    "B": dict.fromkeys(range(REPEATS), "b"),
}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def side(summary: dict, picks: dict[int, str]) -> dict:
    """The summary of one side: per repeat the point of the workload picked, renamed `cpu`."""
    points = [
        {**p, "workload": "cpu"} for p in summary["points"] if picks[p["repeat"]] == p["workload"]
    ]
    assert len(points) == REPEATS
    return {**summary, "points": points}


def noise(summary: dict) -> str:
    """What other processes used during the run, for the failure messages."""
    other = [p["cpu_pct"]["other"] for p in summary["points"] if p.get("cpu_pct")]
    return f"processes outside the run used up to {max(other, default=0):.0f} % of a core"


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
        timeout=280,
    )
    summary = json.loads((root / "out" / "summary.json").read_text())
    for name, picks in SIDES.items():
        (root / f"{name}.json").write_text(json.dumps(side(summary, picks)))
    return done, root, summary


def disturbed_only(result) -> bool:
    """Every untrusted point was disturbed from outside the run (the lab measured other
    processes above its limit there): the machine, not the code, kept compare from judging."""
    return bool(result.untrusted) and all(
        any(reason.startswith("outside CPU") for reason in d.reasons) for d in result.untrusted
    )


def test_run_exits_1_when_a_gate_fails_and_writes_the_gate_outputs(ab_run):
    done, root, _ = ab_run
    assert done.returncode == 1, done.stderr
    assert "FAILED  rps{workload=b} > 1e9" in done.stderr
    cases = ET.parse(root / "out" / "gates.xml").getroot().iter("testcase")
    outcome = {c.get("name"): c.find("failure") is None for c in cases}
    assert outcome == {"failure_ratio < 1%": True, "rps{workload=b} > 1e9": False}
    assert "FAILED" in (root / "out" / "gates.md").read_text()


def test_a_a_shows_no_regression(ab_run):
    _, _, summary = ab_run
    result = compare(side(summary, SIDES["A"]), side(summary, SIDES["A2"]))
    rows = {r.metric: r for r in result.rows}
    assert {"rps", "p50_ms", "p99_ms"} <= set(rows), sorted(rows)
    assert all(r.verdict != "not comparable" for r in result.rows), result.rows
    changed = [
        (r.metric, r.verdict, r.interval) for r in result.rows if r.verdict in ("worse", "better")
    ]
    assert changed == [], f"A/A flagged {changed} ({noise(summary)})"
    assert result.regressions == [] and result.outcome != "regression"


def test_a_b_with_30_percent_more_cpu_per_request_is_flagged(ab_run, capsys):
    _, root, summary = ab_run
    result = compare(side(summary, SIDES["A"]), side(summary, SIDES["B"]))
    (row,) = [r for r in result.rows if r.metric == "rps"]
    # Points disturbed from outside the run make the row untrusted (the trust rule, tested with
    # recorded runs): then the lab must still have seen the 30 % and said why it would not judge.
    disturbed = row.verdict == "untrusted" and disturbed_only(result)
    expected = ("untrusted", False) if disturbed else ("worse", True)
    assert (row.verdict, row.regressed) == expected, (
        f"30 % more CPU per request not flagged: rps {row.baseline} vs {row.current}, "
        f"verdict {row.verdict} ({row.note}), interval {row.interval}; untrusted points: "
        f"{[(d.run, d.repeat, d.reasons) for d in result.untrusted]} ({noise(summary)})"
    )
    assert row.interval[1] < 1 / 1.1, row  # the whole interval beyond the 10 % threshold
    assert result.outcome == ("inconclusive" if disturbed else "regression")
    # and through the command line: its exit status, the row in its Markdown table
    md = root / "ab.md"
    code = main(["compare", str(root / "A.json"), str(root / "B.json"), "--markdown", str(md)])
    out = capsys.readouterr().out
    assert code == (3 if disturbed else 1), out
    word = "UNTRUSTED" if disturbed else "REGRESSION"
    assert word in md.read_text().upper() and "rps" in md.read_text()
