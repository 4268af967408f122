"""A whole lab run through the CLI: real cluster, real locust, every output file and its
content; where its wall time went (phases.csv: every phase of its points, adding up to the wall
time measured from outside; the first target gone before the second point's load starts); the
report rebuilt from the tables alone; Ctrl-C keeps finished points; a target that cannot start
fails cleanly. Each run's processes are all gone afterwards."""

import csv
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from importlib import resources

import jsonschema
import psutil
import pytest

from clusterlab.lab import analyze, load_results
from clusterlab.lab.running.phases import PHASES, totals

TINY = """
name = "tiny"
[target]
kind = "builtin"
[sweep]
workers = [2]
policies = ["rr", "none"]
[workloads]
hello = {{ "/hello" = 1 }}
[load]
users = 8
warmup = 1
duration = {duration}
engine = "locust"
"""
OUTPUTS = [
    "results.csv",
    "workers.csv",
    "timeseries.csv",
    "events.csv",
    "failures.csv",
    "meta.json",
    "summary.json",
    "report.md",
    "report.html",
    "throughput.png",
    "fairness.png",
    "latency.png",
    "share.png",
]


def clusterlab(*args, **kw):
    return subprocess.run(
        [sys.executable, "-m", "clusterlab.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=150,
        **kw,
    )


def assert_all_stopped(directory):
    events = load_results(directory).events
    pids = [int(p) for p in events["pid"].dropna()]
    assert pids, "the run recorded no processes"
    alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    assert not alive, f"still running after the run: {alive}"


@pytest.fixture(scope="module")
def tiny_timed(tmp_path_factory):
    """The tiny run (two points, two targets) and its wall time measured from outside."""
    root = tmp_path_factory.mktemp("lab")
    (root / "tiny.toml").write_text(TINY.format(duration=2))
    started = time.monotonic()
    done = clusterlab("run", root / "tiny.toml", "--out", root / "out")
    return done, root / "out", time.monotonic() - started


@pytest.fixture(scope="module")
def tiny_run(tiny_timed):
    return tiny_timed[:2]


def test_run_exits_zero_and_prints_the_summary_and_where_the_report_is(tiny_run):
    done, out = tiny_run
    assert done.returncode == 0, done.stderr
    assert re.search(r"\| workload +\| policy +\| workers +\| req/s", done.stdout)
    assert f"report: {out / 'report.md'}" in done.stdout
    assert "point 2/2" in done.stderr


def test_run_writes_every_output_file(tiny_run):
    _, out = tiny_run
    for name in OUTPUTS:
        assert (out / name).stat().st_size > 0, name
    assert not (out / "usl.png").exists()
    assert "No fit: needs at least 3 worker counts" in (out / "report.md").read_text()


def test_results_agree_with_the_workers_own_counts_and_the_response_headers(tiny_run):
    _, out = tiny_run
    analysis = analyze(load_results(out))
    results, workers = analysis.points, analysis.run.workers
    assert list(results["status"]) == ["ok", "ok"]
    assert list(results["policy"]) == ["rr", "none"]
    for row in results.to_dict("records"):
        mine = workers[workers["point"] == row["point"]]
        assert len(mine) == 2
        # locust's count, and what locust saw in each response's X-Worker-Id, agree exactly
        assert mine["requests_seen_by_locust"].sum() == row["requests"]
        # the workers' own counters (over the cluster channel, reported every 0.1 s and
        # interpolated at the window's start) agree within 2 % plus a request per user
        assert abs(row["worker_requests"] - row["requests"]) <= 0.02 * row["requests"] + 8
        assert row["rps"] == pytest.approx((row["requests"] - row["failures"]) / row["window_s"])
        assert row["window_s"] == pytest.approx(2.0, abs=0.2)
        # Jain's fairness index of the workers' own counts, computed here: (Σx)² / (n·Σx²)
        x = mine["requests"].tolist()
        assert row["jain_requests"] == pytest.approx(sum(x) ** 2 / (len(x) * sum(v * v for v in x)))
        assert mine["connections"].sum() == 8
        assert row["p50_ms"] <= row["p99_ms"] <= row["max_ms"]
        # every worker that served requests used CPU for them (under "none" a worker may get
        # no connection at all, and then may well use none)
        served = mine[mine["requests"] > 0]
        assert not served.empty and (served["cpu_s"] > 0).all(), mine
        assert row["gen_cpu_max_pct"] > 0


def test_a_hello_endpoint_driven_by_one_locust_process_is_never_called_target_bound(tiny_run):
    # locust needs more CPU per request than the hello endpoint: on shared CPUs the load, not
    # the target, runs out first (generator-bound), the two share the CPUs out (machine), or
    # neither saturates in so short a window (unsaturated): never the target's capacity
    _, out = tiny_run
    results = analyze(load_results(out)).points
    assert "target" not in set(results["verdict"])
    assert all(results["verdict_reason"].str.len() > 0)
    summary = json.loads((out / "summary.json").read_text())
    assert [p["verdict"] for p in summary["points"]] == list(results["verdict"])
    report = (out / "report.md").read_text()
    assert "**Not target-bound:**" in report
    assert "None drawn: no group of points was target-bound" in report


def test_tables_hold_events_and_timeseries(tiny_run):
    _, out = tiny_run
    data = load_results(out)
    counts = data.events["event"].value_counts()
    assert counts["fork"] == 4 and counts["listening"] == 4 and counts["exit"] == 4
    assert counts["target"] == 2 and counts["load"] == 2
    series = set(zip(data.timeseries["source"], data.timeseries["series"], strict=True))
    assert {
        ("locust", "rps"),
        ("worker", "rps"),
        ("worker", "cpu_pct"),
        ("generator", "cpu_pct"),
    } <= series


def test_summary_json_follows_its_published_schema(tiny_run):
    _, out = tiny_run
    summary = json.loads((out / "summary.json").read_text())
    schema = json.loads(
        resources.files("clusterlab.lab.analysis").joinpath("summary.schema.json").read_text()
    )
    jsonschema.validate(summary, schema)
    assert summary["run"]["partial"] is False and summary["run"]["measured_points"] == 2
    assert set(summary["plots"].values()) == {
        "throughput.png",
        "fairness.png",
        "latency.png",
        "share.png",
    }


def test_report_html_is_self_contained(tiny_run):
    _, out = tiny_run
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4
    assert 'src="http' not in page and "<link" not in page


def test_report_rebuilds_from_the_tables_alone(tiny_run, tmp_path):
    _, out = tiny_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    original = json.loads((copy / "summary.json").read_text())
    for name in [
        "summary.json",
        "report.md",
        "report.html",
        *[n for n in OUTPUTS if n.endswith(".png")],
    ]:
        (copy / name).unlink()
    shutil.rmtree(copy / "raw")
    done = clusterlab("report", copy)
    assert done.returncode == 0, done.stderr
    for name in OUTPUTS:
        assert (copy / name).exists(), name
    assert json.loads((copy / "summary.json").read_text()) == original


def test_every_process_the_run_started_is_gone(tiny_run):
    assert_all_stopped(tiny_run[1])


# Where the run's wall time went (phases.csv; the timeline itself: test_lab_phases.py)


def test_a_run_records_every_phase_of_its_points_and_they_add_up_to_its_wall_time(tiny_timed):
    done, out, wall = tiny_timed
    assert done.returncode == 0, done.stderr
    with (out / "phases.csv").open() as f:
        rows = list(csv.DictReader(f))
    names = {r["phase"] for r in rows}
    assert names <= set(PHASES)
    expected = {"start-up", "target start", "counts", "locust start", "warm-up", "window"}
    assert expected | {"drain", "collect", "target stop", "report"} <= names
    assert all(float(r["seconds"]) >= 0 for r in rows)
    assert {r["point"] for r in rows if r["phase"] in ("window", "drain")} == {"0", "1"}
    # contiguous from the process's start: each phase starts where the one before ended
    for before, after in zip(rows, rows[1:], strict=False):
        assert float(after["start_s"]) == pytest.approx(float(before["end_s"]), abs=1e-3)
    recorded = sum(totals(out / "phases.csv").values())
    # all but the process's exit after phases.csv was written (and its launch) is accounted for
    assert recorded <= wall
    assert wall - recorded <= 1.5 + 0.1 * wall


def test_the_window_phases_are_the_windows_locust_measured(tiny_run):
    _, out = tiny_run
    points = json.loads((out / "summary.json").read_text())["points"]
    window = totals(out / "phases.csv")["window"]
    assert window == pytest.approx(sum(p["window_s"] for p in points), abs=0.1)


def test_the_first_target_has_stopped_before_the_second_points_load_starts(tiny_run):
    _, out = tiny_run
    lines = (out / "raw" / "target-000" / "events.jsonl").read_text().splitlines()
    stopped = [e["t"] for e in map(json.loads, lines) if e["event"] == "stopped"]
    load_start = json.loads((out / "raw" / "point-001" / "phases.json").read_text())["start"]
    assert stopped and stopped[0] < load_start
    assert (out / "raw" / "target-001" / "events.jsonl").exists()


def test_ctrl_c_stops_everything_and_keeps_a_partial_report(tmp_path):
    scenario = tmp_path / "long.toml"
    # short points: what is checked is where the run stops, not what its windows measured
    three = TINY.format(duration=1).replace("warmup = 1\n", "warmup = 0.5\n")
    scenario.write_text(three.replace('"none"]', '"none", "reuseport"]'))
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "clusterlab.cli", "run", str(scenario), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # into the second point: its measured window began (locust marks it in the raw files)
        deadline = time.monotonic() + 60
        while len(list(out.glob("raw/*/measuring.json"))) < 2:
            assert time.monotonic() < deadline and proc.poll() is None, "no second point"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        stdout, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1
    assert "PARTIAL" in stdout
    data = load_results(out)
    assert data.meta["partial"] and data.meta["interrupted"]
    assert (data.results["status"] == "ok").sum() >= 1 and len(data.results) < 3
    assert "PARTIAL REPORT" in (out / "report.md").read_text()
    assert_all_stopped(out)


def test_a_target_that_cannot_start_fails_its_points_and_exits_one(tmp_path):
    # a worker that dies at start-up (an app that does not import is refused at validation)
    (tmp_path / "broken.py").write_text("import no_such_module_here\n")
    scenario = tmp_path / "broken.toml"
    scenario.write_text(
        TINY.format(duration=1).replace(
            'kind = "builtin"', 'kind = "script"\nscript = "broken.py"\nready_timeout = 20'
        )
    )
    done = clusterlab("run", scenario, "--out", tmp_path / "out")
    assert done.returncode == 1
    results = load_results(tmp_path / "out").results
    assert list(results["status"]) == ["failed", "failed"]
    assert results["error"].str.contains("target.log").all()
    assert "ModuleNotFoundError" in "".join(
        p.read_text() for p in (tmp_path / "out" / "raw").glob("*/target.log")
    )


def test_an_external_command_target_is_measured_from_its_worker_header(tmp_path):
    server = __import__("pathlib").Path(__file__).parent / "counting_server.py"
    scenario = tmp_path / "external.toml"
    scenario.write_text(f"""
[target]
kind = "command"
command = ["{sys.executable}", "{server}", "{{port}}", "ext-1"]
[sweep]
workers = [1]
[workloads]
hello = {{ "/hello" = 1 }}
[load]
users = 4
warmup = 1
duration = 2
""")
    done = clusterlab("run", scenario, "--out", tmp_path / "out", "-q")
    assert done.returncode == 0, done.stderr
    data = load_results(tmp_path / "out")
    row = data.results.iloc[0]
    assert row["status"] == "ok" and row["counts_source"] == "header"
    assert list(data.workers["worker"]) == ["ext-1"]
    assert data.workers["requests"].iloc[0] == row["requests"]
    assert_all_stopped(tmp_path / "out")


@pytest.mark.parametrize(
    ("target", "source"),
    [
        ('kind = "wsgi"\napp = "user_apps:wsgi_app"\napp_dir = "{here}"', "channel"),
        ('kind = "script"\nscript = "{here}/user_worker.py"', "header"),
    ],
)
def test_a_users_own_app_or_worker_script_is_served_by_every_worker(tmp_path, target, source):
    here = __import__("pathlib").Path(__file__).parent
    scenario = tmp_path / "user.toml"
    scenario.write_text(f"""
[target]
{target.format(here=here)}
[sweep]
workers = [2]
[workloads]
root = {{ "/" = 1 }}
[load]
users = 4
warmup = 0.5
duration = 1
""")
    done = clusterlab("run", scenario, "--out", tmp_path / "out", "-q")
    assert done.returncode == 0, done.stderr
    data = load_results(tmp_path / "out")
    assert data.results["counts_source"].iloc[0] == source
    assert sorted(data.workers["worker"]) == ["1", "2"]
    assert data.workers["requests_seen_by_locust"].sum() == data.results["requests"].iloc[0]
    assert (data.workers["requests"] > 0).all()
    assert_all_stopped(tmp_path / "out")


def test_a_running_server_given_by_url_is_loaded_as_it_is(tmp_path, counting_server):
    scenario = tmp_path / "url.toml"
    scenario.write_text(f"""
[target]
kind = "url"
url = "{counting_server.url}"
[sweep]
workers = [1]
[workloads]
hello = {{ "/hello" = 1 }}
[load]
users = 2
warmup = 0.5
duration = 1
""")
    before = counting_server.counts()["requests"]
    done = clusterlab("run", scenario, "--out", tmp_path / "out", "-q")
    assert done.returncode == 0, done.stderr
    data = load_results(tmp_path / "out")
    row = data.results.iloc[0]
    assert (row["policy"], row["workers"], row["status"]) == ("n/a", 0, "ok")
    assert data.workers["requests"].tolist() == [row["requests"]]
    assert row["requests"] < counting_server.counts()["requests"] - before
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["share.png"]
    schema = json.loads(
        resources.files("clusterlab.lab.analysis").joinpath("summary.schema.json").read_text()
    )
    jsonschema.validate(json.loads((tmp_path / "out" / "summary.json").read_text()), schema)
