"""Where a run's wall time goes (``phases.csv``): the timeline adds up by construction, and a
real ``clusterlab run`` (two targets) records every phase of its points, each non-negative,
adding up to the run's wall time as measured from outside the process; a target stopped while
the next one starts is gone before the next point's load starts."""

import csv
import json
import subprocess
import sys
import time

import pytest
from hdrh.histogram import HdrHistogram

from clusterlab.lab.protocol import HISTOGRAM_RANGE_US
from clusterlab.lab.running.load import GRID, latency_points
from clusterlab.lab.running.phases import PHASES, PhaseLog, totals

TWO_POINTS = """
name = "phases"
[target]
kind = "builtin"
[sweep]
workers = [1]
policies = ["rr", "none"]
[workloads]
hello = { "/hello" = 1 }
[load]
users = 4
warmup = 0.5
duration = 1
engine = "locust"
"""


def test_the_timeline_fills_gaps_with_other_and_counts_overlaps_once():
    log = PhaseLog(origin=10.0)
    log.add("target start", 11.0, 12.0)
    log.add("window", 12.5, 14.0, point=0)
    log.add("target stop", 13.5, 15.0)  # overlaps the window by 0.5 s
    line = [(p.name, p.start, p.end) for p in log.timeline()]
    assert line == [
        ("start-up", 10.0, 11.0),
        ("target start", 11.0, 12.0),
        ("other", 12.0, 12.5),
        ("window", 12.5, 14.0),
        ("target stop", 14.0, 15.0),
    ]
    assert sum(end - start for _, start, end in line) == pytest.approx(15.0 - 10.0)


@pytest.fixture(scope="module")
def two_point_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("phases")
    (root / "two.toml").write_text(TWO_POINTS)
    out = root / "out"
    argv = [sys.executable, "-m", "clusterlab.cli", "run", root / "two.toml", "--out", out]
    t0 = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    wall = time.monotonic() - t0
    assert done.returncode == 0, done.stderr
    return out, wall


def test_a_run_records_every_phase_of_its_points_and_they_add_up_to_its_wall_time(two_point_run):
    out, wall = two_point_run
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


def test_the_window_phases_are_the_windows_locust_measured(two_point_run):
    out, _ = two_point_run
    points = json.loads((out / "summary.json").read_text())["points"]
    window = totals(out / "phases.csv")["window"]
    assert window == pytest.approx(sum(p["window_s"] for p in points), abs=0.1)


def test_the_first_target_has_stopped_before_the_second_points_load_starts(two_point_run):
    out, _ = two_point_run
    lines = (out / "raw" / "target-000" / "events.jsonl").read_text().splitlines()
    stopped = [e["t"] for e in map(json.loads, lines) if e["event"] == "stopped"]
    load_start = json.loads((out / "raw" / "point-001" / "phases.json").read_text())["start"]
    assert stopped and stopped[0] < load_start
    assert (out / "raw" / "target-001" / "events.jsonl").exists()


def test_the_latency_grid_read_in_one_pass_is_each_percentile_read_alone():
    # a point's collect phase reads ~1,000 percentiles: one pass over the histogram, same values
    histogram = HdrHistogram(*HISTOGRAM_RANGE_US)
    for i in range(1, 20_000):
        histogram.record_value((i * 7919) % 250_000 + 1)
    points = latency_points(histogram)
    alone = [histogram.get_value_at_percentile(p) / 1000.0 for p in GRID[:-1]]
    assert points["ms"].tolist()[:-1] == alone
    assert points["ms"].iloc[-1] == histogram.get_max_value() / 1000.0


def test_the_bench_row_prints_each_phase_the_report_apart_and_the_unaccounted_exit():
    from bench.suite import phase_line

    sums = dict.fromkeys(PHASES, 0.0) | {"start-up": 2.0, "window": 10.0, "report": 1.5}
    line = phase_line([{"wall_s": 14.0, "phases": sums}])
    assert line == "per phase (s): start-up 2.00, window 10.00; exit 0.50; report 1.50"
