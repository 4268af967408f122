"""Crash runs through the CLI, real cluster and real locust: every SIGKILL is followed by a
replacement listening, round-robin loses no queued connection, the recovery metrics are there
and sane, the timeline and the recovery table are drawn; a hang is caught by the heartbeat and
the restart limit refuses what comes after it."""

import json
from importlib import resources

import jsonschema
import pandas as pd
import pytest
from test_lab_run_end_to_end import assert_all_stopped, clusterlab

from clusterlab.lab import load_results

CRASHY = """
name = "crashy"
[target]
kind = "builtin"
start_method = "forkserver"   # replacements forked from the template: exit statuses via it
[sweep]
workers = [2]
policies = ["rr"]
[workloads]
io = { "/io?ms=20" = 1 }
[load]
users = 8
warmup = 1
duration = 7
connection = "new"
[[faults]]
kind = "sigkill"
every = 1.5
stop = 5
[[faults]]
kind = "exception"
start = 2.2
stop = 2.3
every = 1
[respawn]
policy = "backoff"
base = 0.05
cap = 0.2
max_restarts = 20
within = 60
"""
LIMITED = """
name = "limited"
[target]
kind = "builtin"
[sweep]
workers = [2]
policies = ["none"]
[workloads]
io = { "/io?ms=20" = 1 }
[load]
users = 8
warmup = 1
duration = 6
[[faults]]
kind = "hang"
hang = "handler"
target = "busiest"            # under none with keep-alive, a worker may get no request at all
start = 1
stop = 1.2
every = 1
[[faults]]
kind = "sigkill"
start = 3.5
stop = 5
every = 1
[respawn]
policy = "immediate"
max_restarts = 1
within = 60
heartbeat = { interval = 0.2, timeout = 1 }
"""


def run(tmp_path_factory, name, text):
    root = tmp_path_factory.mktemp(name)
    (root / f"{name}.toml").write_text(text)
    done = clusterlab("run", root / f"{name}.toml", "--out", root / "out")
    return done, root / "out"


@pytest.fixture(scope="module")
def crashy(tmp_path_factory):
    return run(tmp_path_factory, "crashy", CRASHY)


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    return run(tmp_path_factory, "limited", LIMITED)


def by(events: pd.DataFrame, name: str) -> pd.DataFrame:
    return events[events["event"] == name].sort_values("t")


def test_a_crash_run_succeeds_and_draws_the_timeline_and_the_recovery_table(crashy):
    done, out = crashy
    assert done.returncode == 0, done.stderr
    assert (out / "timeline.png").read_bytes()[:4] == b"\x89PNG"
    report = (out / "report.md").read_text()
    assert "## Recovery" in report and "## Every fault" in report
    assert "![timeline.png](timeline.png)" in report
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 5
    summary = json.loads((out / "summary.json").read_text())
    schema = json.loads(
        resources.files("clusterlab.lab.analysis").joinpath("summary.schema.json").read_text()
    )
    jsonschema.validate(summary, schema)
    assert summary["schema_version"] == 2 and summary["plots"]["timeline"] == "timeline.png"
    assert len(summary["recovery"]["points"]) == 1 and len(summary["recovery"]["faults"]) == 4


def test_every_sigkill_is_followed_by_a_replacement_listening_in_its_slot(crashy):
    _, out = crashy
    events = load_results(out).events
    kills = by(events, "fault")
    kills = kills[kills["kind"] == "sigkill"]
    assert kills["t"].tolist() == pytest.approx([1.5, 3.0, 4.5], abs=0.3)
    for kill in kills.to_dict("records"):
        exit_ = by(events, "exit")
        exit_ = exit_[(exit_["worker"] == kill["worker"]) & (exit_["t"] >= kill["t"])].iloc[0]
        assert (exit_["kind"], exit_["signal"]) == ("crash", "SIGKILL")
        after = by(events, "listening")
        after = after[(after["slot"] == kill["slot"]) & (after["t"] > exit_["t"])]
        assert not after.empty and after.iloc[0]["worker"] != kill["worker"]
    assert len(by(events, "restart_scheduled")) == 3
    assert by(events, "fault_fired")["kind"].tolist() == ["exception"]


def test_round_robin_loses_no_queued_connection(crashy):
    _, out = crashy
    row = load_results(out).results.iloc[0]
    assert row["rr_dropped"] == 0
    assert row["rr_accepted"] >= row["requests"] * 0.9 and row["rr_requeued"] >= 0


def test_recovery_metrics_are_present_and_sane(crashy):
    _, out = crashy
    summary = json.loads((out / "summary.json").read_text())
    (point,) = summary["recovery"]["points"]
    assert point["faults"] == 4 and point["took_effect"] == 4 and point["skipped"] == 0
    assert point["crashes"] == 3 and point["replaced"] == 3
    assert 0 < point["to_listening_median_s"] <= point["to_listening_max_s"] < 15
    assert point["rr_dropped"] == 0 and point["refused"] == 0 and not point["limit_reached"]
    assert point["fail_5xx"] >= 1  # the armed exception's 500
    faults = summary["recovery"]["faults"]
    for fault in faults:
        assert fault["pre_rps"] > 0 and fault["failures"] >= 0
        assert fault["to_recover_s"] is None or 0 <= fault["to_recover_s"] < 7
    results = load_results(out).results.iloc[0]
    assert sum(f["failures"] for f in faults) <= results["failures"]
    timeseries = load_results(out).timeseries
    ok = timeseries[timeseries["series"] == "ok_100ms"]
    assert ok["value"].sum() >= results["requests"] - results["failures"]


def test_the_recovery_table_is_rebuilt_from_the_tables(crashy, tmp_path):
    import shutil

    _, out = crashy
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    for name in ("summary.json", "report.md", "timeline.png"):
        (copy / name).unlink()
    shutil.rmtree(copy / "raw")
    done = clusterlab("report", copy)
    assert done.returncode == 0, done.stderr
    assert (copy / "timeline.png").exists()
    rebuilt = json.loads((copy / "summary.json").read_text())
    assert rebuilt["recovery"] == json.loads((out / "summary.json").read_text())["recovery"]


def test_every_process_of_the_crash_run_is_gone(crashy):
    assert_all_stopped(crashy[1])


def test_a_hang_is_caught_and_the_restart_limit_refuses_later_restarts(limited):
    done, out = limited
    assert done.returncode == 0, done.stderr
    events = load_results(out).events
    hang = by(events, "fault_fired").iloc[0]
    detected = by(events, "hang_detected").iloc[0]
    # silence counts from the last beat (at most one interval before the hang)
    assert detected["worker"] == hang["worker"] and 0.7 < detected["t"] - hang["t"] < 5
    assert hang["t"] < 1.5
    exits = by(events, "exit")
    assert exits[exits["worker"] == hang["worker"]].iloc[0]["kind"] == "hang"
    assert len(by(events, "restart_scheduled")) == 1  # the hung worker's replacement
    assert len(by(events, "restart_limit")) == 1
    assert len(by(events, "restart_refused")) == 2  # both SIGKILLs after the limit
    summary = json.loads((out / "summary.json").read_text())
    (point,) = summary["recovery"]["points"]
    assert (point["hangs_detected"], point["refused"], point["limit_reached"]) == (1, 2, True)
    assert point["replaced"] == 1 and point["crashes"] == 3
    assert " limit" in (out / "report.md").read_text()
    assert_all_stopped(out)
