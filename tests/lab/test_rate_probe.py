"""load.rate = "75%": an open-model rate relative to the capacity a closed-model probe measures in
the same run; the faithfulness check of open-model points; the policy table in summary.json; a
"module:Name" policy whose import hangs."""

import json
import math
import re

import pandas as pd
import pytest

from clusterlab import cli
from clusterlab.lab.analysis.open_faithful import LATE_MAX, RATE_TOLERANCE, faithful
from clusterlab.lab.analysis.policies import policy_summary, policy_table
from clusterlab.lab.config.scenario import IMPORT_TIMEOUT_ENV, ScenarioError, load_scenario
from clusterlab.lab.running.capacity_probe import capacity_of, probe_scenario

BASE = """
[target]
kind = "builtin"
[sweep]
workers = [2]
policies = {policies}
[workloads]
cpu = {{ "/cpu?ms=1" = 1 }}
[load]
users = {users}
warmup = 0.3
duration = 1
{extra}
"""


def write(tmp_path, extra='model = "open"\nrate = "75%"', users="8", policies='["rr"]'):
    path = tmp_path / "s.toml"
    path.write_text(BASE.format(extra=extra, users=users, policies=policies))
    return path


def refused(tmp_path, **kwargs) -> str:
    with pytest.raises(ScenarioError) as caught:
        load_scenario(write(tmp_path, **kwargs))
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(tmp_path / "s.toml"))
    return message


def test_a_share_of_capacity_is_kept_as_a_share_with_no_rate_yet(tmp_path):
    load = load_scenario(write(tmp_path, 'model = "open"\nrate = "72.5%"')).load
    assert load.rate_share == pytest.approx(0.725) and load.rate is None
    probe = probe_scenario(load_scenario(write(tmp_path))).load
    assert (probe.model, probe.rate, probe.rate_share, probe.wait) == ("closed", None, None, 0.0)
    assert probe.engine == "locust"  # the points' engine, also where wrk could run the probe


@pytest.mark.parametrize(
    ("extra", "users", "says"),
    [
        ('model = "open"\nrate = "0%"', "8", "load.rate: expected a share of capacity above 0%"),
        ('model = "open"\nrate = "150%"', "8", 'at most 100%, got "150%"'),
        ('model = "open"\nrate = "75 %"', "8", "load.rate: expected a positive number"),
        ('model = "open"\nrate = "fast"', "8", "load.rate: expected a positive number"),
        ('rate = "75%"', "8", "load.rate: expected a share of capacity only when load.model"),
        ('model = "open"\nrate = "75%"', "[4, 8]", "load.users: expected a single value"),
        (
            'model = "open"\nrate = "75%"\n[slo]\np99_ms = 50\n[search]\nstart = 10',
            "8",
            "load.rate: expected no rate (the search picks the rates)",
        ),
    ],
)
def test_a_bad_share_of_capacity_is_one_line_naming_the_field(tmp_path, extra, users, says):
    assert says in refused(tmp_path, extra=extra, users=users)


def test_a_policy_whose_import_hangs_hits_the_timeout_exits_two_and_writes_nothing(
    tmp_path, monkeypatch, capsys
):
    # the check imports in a child process from the working directory, killed at the timeout
    (tmp_path / "stuck_sched.py").write_text(
        "import time\ntime.sleep(3)\nfrom clusterlab.cluster._policies import TwoChoices as Stuck\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(IMPORT_TIMEOUT_ENV, "1")
    monkeypatch.setattr("clusterlab.cli.signal.signal", lambda *args: None)
    path = write(tmp_path, "", policies='["rr", "stuck_sched:Stuck"]')
    out = tmp_path / "out"
    try:
        status = cli.main(["run", str(path), "--out", str(out)])
    except SystemExit as exc:
        status = exc.code
    line = capsys.readouterr().err.strip()
    assert status == 2, line
    assert "\n" not in line and "sweep.policies[1]" in line
    assert "imports within 1 s" in line and "still importing" in line
    assert not out.exists()


def test_capacity_counts_the_requests_completed_inside_the_window():
    row = {"window_s": 4.0, "latency_samples": 1443, "failures": 3, "requests": 1539, "rps": 385.0}
    assert capacity_of(row) == pytest.approx(1440 / 4)
    assert capacity_of({"window_s": 4.0, "rps": 385.0}) == 385.0
    # a count that is no part of locust's own is not trusted
    assert capacity_of({**row, "latency_samples": 5e10}) == 385.0


def point(asked, arrivals, late=0, verdict="unsaturated", window=4.0, status="ok"):
    return {
        "status": status,
        "offered_rps": asked,
        "arrivals": arrivals,
        "late_arrivals": late,
        "window_s": window,
        "verdict": verdict,
    }


def test_an_open_model_point_is_faithful_only_at_the_asked_rate_few_late_generator_free():
    ok, why = faithful(point(360, 1442))
    assert ok is True and why.startswith("360 of 360 req/s asked")
    below = 360 * 4 * (1 - RATE_TOLERANCE) - 8
    assert faithful(point(360, below))[0] is False
    assert "rate off" in faithful(point(360, below))[1]
    late = math.ceil(1440 * LATE_MAX) + 5
    assert "late" in faithful(point(360, 1440, late=late))[1]
    assert faithful(point(360, 1440, late=late))[0] is False
    assert "generator" in faithful(point(360, 1440, verdict="generator"))[1]
    assert faithful({"status": "ok", "offered_rps": math.nan, "window_s": 4.0}) == (None, "")
    assert faithful(point(360, 1440, status="failed")) == (None, "")


def frame(rows):
    base = {
        "workload": "w",
        "workers": 4,
        "status": "ok",
        "p50_ms": 1.0,
        "p999_ms": 9.0,
        "max_ms": 20.0,
        "jain_requests": 1.0,
    }
    return pd.DataFrame([{**base, **r} for r in rows])


def test_the_policy_table_counts_faithful_points_and_an_unfaithful_one_limits_its_policy():
    rows = [
        {"policy": "rr", "p99_ms": 30.0, **point(300, 1200, verdict="machine")},
        {"policy": "rr", "p99_ms": 32.0, **point(300, 1201, verdict="machine")},
        {"policy": "jiq", "p99_ms": 10.0, **point(300, 1000)},
        {"policy": "jiq", "p99_ms": 12.0, **point(300, 1199)},
    ]
    table = policy_table(frame(rows), []).set_index("policy")
    # machine-bound below capacity is no limit for an open-model point: faithfulness is
    assert table.loc["rr", "faithful"] == 2 and not table.loc["rr", "limited"]
    assert table.loc["jiq", "faithful"] == 1 and table.loc["jiq", "limited"]
    assert "250 of 300 req/s asked" in table.loc["jiq", "unfaithful"]


def test_summary_keeps_the_policy_table_and_the_capacity_probes():
    rows = [
        {"policy": "rr", "p99_ms": 30.0, **point(300, 1200)},
        {"policy": "p2c", "p99_ms": 20.0, **point(300, 1200)},
    ]
    probes = [{"workload": "w", "capacity_rps": 400.0, "verdict": "target", "rate": 300.0}]
    meta = {
        "scenario": {"sweep": {"policies": ["rr", "p2c"]}, "faults": []},
        "capacity_probes": probes,
    }
    found = policy_summary(frame(rows), meta)
    table = {r["policy"]: r for r in found["policies"]["table"]}
    assert table["p2c"]["p99_ms_max"] == 20.0 and table["rr"]["faithful"] == 1
    assert found["policies"]["cases"][0]["best"] == "p2c"
    assert found["capacity_probes"] == probes
    only_rr = {"scenario": {"sweep": {"policies": ["rr"]}, "faults": []}}
    assert policy_summary(frame(rows), only_rr) == {}


def test_a_run_paces_its_points_at_the_share_of_the_probed_capacity(tmp_path):
    from clusterlab.lab.pipeline import run_lab
    from clusterlab.lab.running.progress import ConsoleProgress

    scenario = load_scenario(
        write(tmp_path, 'model = "open"\nrate = "50%"', policies='["rr", "least-conn"]')
    )
    out = tmp_path / "run"
    lab = run_lab(scenario, out, ConsoleProgress(quiet=True))
    probe_row = pd.read_csv(out / "capacity" / "results.csv").iloc[0]
    capacity = probe_row["latency_samples"] / probe_row["window_s"]  # failures: none expected
    assert probe_row["status"] == "ok" and probe_row["failures"] == 0
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 2 and set(results["status"]) == {"ok"}
    assert results["offered_rps"].tolist() == [round(0.5 * capacity, 1)] * 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["capacity_probes"][0]["rate"] == round(0.5 * capacity, 1)
    assert summary["capacity_probes"][0]["verdict"] in {
        "target",
        "machine",
        "generator",
        "unsaturated",
    }
    assert [r["policy"] for r in summary["policies"]["table"]] == ["rr", "least-conn"]
    assert "Capacity probe, cpu, 2 workers" in lab.report_md


def test_summary_points_take_every_cluster_policy_and_module_name():
    from clusterlab.cluster._policies import NAMES
    from clusterlab.lab.analysis.summary import schema

    policy = schema()["properties"]["points"]["items"]["properties"]["policy"]
    assert set(policy["anyOf"][0]["enum"]) == {*NAMES, "n/a"}
    assert re.fullmatch(policy["anyOf"][1]["pattern"], "mypkg.sched:Mine")
