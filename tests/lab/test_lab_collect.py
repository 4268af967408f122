"""Turning raw observations into rows: counter interpolation, per-worker windows, the
generator-bound rule, and locust's history made monotonic across the warm-up reset."""

import math

import numpy as np
import pandas as pd
import pytest

from clusterlab.lab.running.load import LoadOutcome
from clusterlab.lab.running.rows import (
    _unreset,
    count_at,
    per_second,
    worker_rows,
)

pytestmark = pytest.mark.parallel_ok  # starts no load: runs beside the cluster tests


def test_count_at_interpolates_between_reports_and_holds_at_the_ends():
    samples = [(10.0, 100.0), (11.0, 300.0)]
    assert count_at(samples, 10.25) == pytest.approx(150.0)
    assert count_at(samples, 9.0) == 100.0 and count_at(samples, 12.0) == 300.0
    assert math.isnan(count_at([], 1.0))


def _outcome(start, end, tally=None):
    return LoadOutcome({}, start, end, pd.DataFrame(), pd.DataFrame(), tally or {})


def test_worker_rows_count_requests_from_the_window_start_to_the_final_snapshot():
    before = {
        "1": {"t": 0.0, "requests": 0, "connections": 0},
        "2": {"t": 0.0, "requests": 0, "connections": 0},
    }
    reports = [
        {"worker": 1, "sent": 1.0, "requests": 100, "connections": 4},
        {"worker": 1, "sent": 2.0, "requests": 300, "connections": 4},
        {"worker": 2, "sent": 1.5, "requests": 50, "connections": 2},
    ]
    after = {
        "1": {"t": 5.0, "requests": 700, "connections": 4},
        "2": {"t": 5.0, "requests": 50, "connections": 2},
    }
    usage = pd.DataFrame(
        {
            "role": ["worker"],
            "key": ["1"],
            "pid": [42],
            "cpu_s": [1.5],
            "cpu_pct": [50.0],
            "rss_mb": [30.0],
        }
    )
    rows = worker_rows({"point": 0}, before, reports, after, _outcome(1.5, 4.0, {"1": 499}), usage)
    by = {r["worker"]: r for r in rows}
    assert by["1"]["requests"] == pytest.approx(700 - 200)  # 200 = halfway from 100 to 300
    assert by["2"]["requests"] == pytest.approx(0.0)
    assert by["1"]["connections"] == 4 and by["2"]["connections"] == 2
    assert by["1"]["requests_seen_by_locust"] == 499 and by["2"]["requests_seen_by_locust"] == 0
    assert by["1"]["pid"] == 42 and math.isnan(by["2"]["cpu_s"])


def test_worker_rows_from_a_header_tally_alone():
    rows = worker_rows(
        {},
        {},
        [],
        {},
        _outcome(0, 1, {"a": 30, "b": 10}),
        pd.DataFrame(columns=["role", "key", "pid", "cpu_s", "cpu_pct", "rss_mb"]),
    )
    assert {r["worker"]: r["requests"] for r in rows} == {"a": 30, "b": 10}
    assert all(math.isnan(r["connections"]) for r in rows)


def test_unreset_continues_a_count_that_restarted_at_the_warmup_cut():
    assert list(_unreset(np.array([0.0, 50.0, 120.0, 10.0, 90.0]))) == [0, 50, 120, 130, 210]


def test_per_second_rates_come_from_the_counter_at_whole_second_marks():
    # 100/s until t=12, then 300/s; origin 10 → marks 11, 12, 13
    samples = [(10.0, 0.0), (10.5, 50.0), (12.0, 200.0), (13.0, 500.0)]
    assert per_second(samples, origin=10.0) == [(11.0, 100.0), (12.0, 100.0), (13.0, 300.0)]
    assert per_second(samples[:1], origin=10.0) == []


def test_a_worker_count_is_whole_and_unheadered_requests_belong_to_no_worker():
    # interpolated at 1.2 s between 100 (1 s) and 300 (2 s): 140; the window has 333 - 140
    before = {"1": {"t": 0.0, "requests": 0, "connections": 0}}
    reports = [
        {"worker": 1, "sent": 1.0, "requests": 100, "connections": 1},
        {"worker": 1, "sent": 2.0, "requests": 300, "connections": 1},
    ]
    after = {"1": {"t": 3.0, "requests": 333, "connections": 1}}
    empty = pd.DataFrame(columns=["role", "key", "pid", "cpu_s", "cpu_pct", "rss_mb"])
    rows = worker_rows({}, before, reports, after, _outcome(1.2, 3.0), empty)
    assert [r["requests"] for r in rows] == [round(333 - 140.0)]
    assert float(rows[0]["requests"]).is_integer()
    # a server that sets no worker header: the tally's "unknown" is not a worker
    assert worker_rows({}, {}, [], {}, _outcome(0, 1, {"unknown": 40}), empty) == []


def test_workers_csv_writes_counts_as_whole_numbers_and_a_missing_one_as_empty(tmp_path):
    from clusterlab.lab.analysis.tables import RunTables

    tables = RunTables(tmp_path)
    keys = {"point": 0, "repeat": 0, "workload": "w", "policy": "rr", "workers": 2}
    tables.add(
        "workers", [{**keys, "worker": "1", "pid": 10, "requests": 193.0, "connections": 4.0}]
    )
    tables.add("workers", [{**keys, "worker": "2", "pid": 11, "requests": math.nan}])
    tables.write()
    lines = (tmp_path / "workers.csv").read_text().splitlines()
    assert lines[1].split(",")[5:9] == ["1", "10", "193", "4"]
    assert lines[2].split(",")[5:8] == ["2", "11", ""]
