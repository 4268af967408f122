"""Recovery metrics on hand-built tables with hand-computed answers: pre-crash level, time back
to 90 %, error bursts by cause, time to the replacement's 'listening', the per-point summary;
and the timeline plot drawn from the same tables."""

import json
import math

import pandas as pd
import pytest

from clusterlab.lab.analysis import recovery
from clusterlab.lab.analysis.tables import COLUMNS
from clusterlab.lab.output import plots

pytestmark = pytest.mark.parallel_ok  # starts no load: runs beside the cluster tests

KEYS = {"point": 0, "repeat": 0, "workload": "w", "policy": "rr", "workers": 2}


def bins(rates: dict[tuple[float, float], float], start=-1.9, end=10.0) -> list[dict]:
    """ok_100ms rows: 10 requests per bin (100 req/s) except where ``rates`` says otherwise
    ({(first bin end, last bin end): req/s})."""
    rows = []
    for k in range(round((end - start) / 0.1) + 1):
        t = round(start + 0.1 * k, 3)
        rate = next((r for (a, b), r in rates.items() if a - 1e-9 <= t <= b + 1e-9), 100.0)
        rows.append(
            {
                **KEYS,
                "t": t,
                "source": "locust",
                "key": "",
                "series": "ok_100ms",
                "value": rate / 10,
            }
        )
    return rows


def fails(*items: tuple[float, str, float]) -> list[dict]:
    return [
        {**KEYS, "t": t, "source": "locust", "key": cause, "series": "fail_100ms", "value": n}
        for t, cause, n in items
    ]


def event(t, name, worker=None, slot=None, kind=None, **detail) -> dict:
    return {
        **KEYS,
        "time": 1e9 + t,
        "t": t,
        "event": name,
        "worker": worker,
        "pid": None,
        "slot": slot,
        "kind": kind,
        "code": None,
        "signal": None,
        "detail": json.dumps(detail) if detail else "",
    }


def series(*rows) -> pd.DataFrame:
    return pd.DataFrame([r for part in rows for r in part], columns=COLUMNS["timeseries"])


def test_throughput_is_successes_per_second_of_each_bin_in_time_order():
    frame = series(
        bins({}, start=0.1, end=0.3),
        [{**KEYS, "t": 0.2, "source": "worker", "key": "1", "series": "rps", "value": 999}],
    ).iloc[::-1]
    rps = recovery.throughput(frame)
    assert list(rps.index) == [0.1, 0.2, 0.3]
    assert list(rps) == pytest.approx([100.0, 100.0, 100.0])


def test_pre_crash_level_is_the_mean_of_the_two_seconds_before():
    rps = recovery.throughput(series(bins({(2.1, 3.0): 50.0})))
    # bins ending in (1.0, 3.0]: ten at 100 req/s, ten at 50
    assert recovery.pre_crash_level(rps, 3.0) == pytest.approx(75.0)
    assert math.isnan(recovery.pre_crash_level(rps, -1.5))  # less than 1 s of bins before


@pytest.mark.parametrize(
    ("dip", "expected"),
    [
        ({}, 0.0),  # never fell below 90 %
        ({(3.1, 3.5): 0.0}, 0.5),  # five empty bins: the first all-100 span starts at 3.5
        ({(3.1, 3.2): 0.0}, 0.2),  # spans ending 3.5, 3.6 average 60, 80; 3.7 is 100: from 3.2
        ({(3.1, 3.2): 80.0}, 0.0),  # the first half second averages 92: never below 90 %
        ({(3.1, 3.3): 80.0}, 0.1),  # the first averages 88; the one from 3.1 on, 92
        ({(3.1, 10.0): 50.0}, math.nan),  # never back
    ],
)
def test_time_to_recover_is_the_start_of_the_first_half_second_back_at_90_percent(dip, expected):
    rps = recovery.throughput(series(bins(dip)))
    got = recovery.time_to_recover(rps, 3.0, until=10.0, level=100.0)
    assert got == pytest.approx(expected, abs=1e-6, nan_ok=True)


def test_recovery_after_the_next_fault_does_not_count():
    rps = recovery.throughput(series(bins({(3.1, 4.0): 0.0})))
    assert math.isnan(recovery.time_to_recover(rps, 3.0, until=4.2, level=100.0))
    assert recovery.time_to_recover(rps, 3.0, until=10.0, level=100.0) == pytest.approx(1.0)


def test_the_fault_free_level_is_the_window_before_the_first_fault():
    # 100 req/s for 2 s, then 60: the level is 100 whatever came after, warm-up left out
    rps = recovery.throughput(series(bins({(-1.0, 0.0): 500.0, (2.1, 10.0): 60.0})))
    assert recovery.fault_free_level(rps, 2.0) == pytest.approx(100.0)
    assert math.isnan(recovery.fault_free_level(rps, 0.5))  # under MIN_FAULT_FREE_S of it


def test_a_cluster_that_stays_below_its_fault_free_level_never_recovers():
    # fault-free 100 req/s; the first crash leaves it at 70 and the second at 65: measured
    # against the level before each crash (70 after the first) the second would look recovered
    rps = recovery.throughput(series(bins({(3.1, 6.0): 70.0, (6.1, 10.0): 65.0})))
    level = recovery.fault_free_level(rps, 3.0)
    assert level == pytest.approx(100.0)
    assert recovery.pre_crash_level(rps, 6.0) == pytest.approx(70.0)
    assert math.isnan(recovery.time_to_recover(rps, 6.0, until=10.0, level=level))


def test_a_burst_counts_the_failed_bins_after_the_fault_by_cause():
    frame = series(
        fails(
            (3.0, "closed", 9),
            (3.1, "closed", 4),
            (3.2, "refused", 1),
            (3.3, "weird", 2),
            (6.0, "5xx", 1),
        )
    )
    burst = recovery.failure_burst(frame, 3.0, until=5.0)
    assert burst == {**dict.fromkeys(recovery.CAUSES, 0.0), "closed": 4, "refused": 1, "other": 2}


def hand_built_run():
    timeseries = series(
        bins({(3.1, 3.2): 0.0, (8.1, 10.0): 50.0}),
        fails((1.0, "5xx", 2), (3.1, "closed", 4), (3.2, "refused", 1), (6.6, "5xx", 1)),
    )
    events = pd.DataFrame(
        [
            event(-2.0, "fork", "1", 0),
            event(-2.0, "fork", "2", 1),
            event(-1.0, "listening", "1", 0),
            event(-1.0, "listening", "2", 1),
            event(3.0, "fault", "1", 0, "sigkill", id=0, how="SIGKILL"),
            event(3.01, "exit", "1", 0, "crash"),
            event(3.02, "restart_scheduled", None, 0, "crash", delay=0.1),
            event(3.12, "fork", "3", 0),
            event(3.45, "listening", "3", 0),
            event(6.0, "fault", "2", 1, "exception", id=1, how="armed"),
            event(6.5, "fault_fired", "2", 1, "exception", id=1),
            event(8.0, "fault", "3", 0, "sigkill", id=2, how="SIGKILL"),
            event(8.02, "exit", "3", 0, "crash"),
            event(8.03, "restart_refused", None, 0, "crash"),
            event(8.03, "restart_limit", None, 0, "crash"),
            event(9.0, "fault_skipped", None, None, "sigkill", id=3, reason="no ready worker"),
            event(12.5, "exit", "2", 1, "clean"),  # the target stopped after the load
        ],
        columns=COLUMNS["events"],
    )
    results = pd.DataFrame(
        [{**KEYS, "status": "ok", "window_s": 10.0, "rr_requeued": 3.0, "rr_dropped": 0.0}]
    )
    return results, timeseries, events


def test_each_fault_gets_its_effect_exit_replacement_recovery_and_burst():
    results, timeseries, events = hand_built_run()
    per_fault = recovery.faults(events, timeseries, results).set_index("fault")
    a, b, c = (per_fault.loc[i] for i in (0, 1, 2))
    assert (a["t_effect"], a["exit_kind"], a["t_exit"]) == (3.0, "crash", 3.01)
    assert (a["replacement"], a["t_listening"]) == ("3", 3.45)
    assert a["to_listening_s"] == pytest.approx(0.45)
    assert a["pre_rps"] == pytest.approx(100.0) and a["to_recover_s"] == pytest.approx(0.2)
    assert (a["failures"], a["fail_closed"], a["fail_refused"]) == (5, 4, 1)
    # an exception armed at 6.0 acts when a request fires it; the worker lives on
    assert b["t_fault"] == 6.0 and b["t_effect"] == 6.5
    assert pd.isna(b["exit_kind"]) and pd.isna(b["replacement"]) and math.isnan(b["t_exit"])
    assert b["to_recover_s"] == 0.0 and (b["failures"], b["fail_5xx"]) == (1, 1)
    # the last crash: no replacement (the limit), throughput stays at half
    assert c["exit_kind"] == "crash" and pd.isna(c["replacement"])
    assert math.isnan(c["to_listening_s"]) and math.isnan(c["to_recover_s"])
    assert not c["recovered"] and c["failures"] == 0
    assert (a["recovery"], c["recovery"]) == ("back", "never back within the run")
    assert a["fault_free_rps"] == c["fault_free_rps"] == pytest.approx(100.0)


def test_a_point_summary_adds_the_faults_up():
    results, timeseries, events = hand_built_run()
    per_fault = recovery.faults(events, timeseries, results)
    (row,) = recovery.points(events, per_fault, results).to_dict("records")
    assert row["faults"] == 3 and row["skipped"] == 1 and row["took_effect"] == 3
    assert (row["crashes"], row["replaced"]) == (2, 1)
    assert row["to_listening_median_s"] == pytest.approx(0.45)
    assert row["recovered"] == 2
    assert row["to_recover_median_s"] == pytest.approx(0.1)
    assert row["to_recover_max_s"] == pytest.approx(0.2)
    assert row["failures"] == 6  # the 5xx before the first fault is nobody's burst
    assert (row["fail_closed"], row["fail_refused"], row["fail_5xx"]) == (4, 1, 1)
    assert (row["rr_requeued"], row["rr_dropped"]) == (3.0, 0.0)
    assert (row["restarts"], row["refused"], row["limit_reached"]) == (1, 1, True)
    assert row["hangs_detected"] == 0


def test_points_without_faults_have_no_recovery_rows():
    results, timeseries, events = hand_built_run()
    quiet = events[~events["event"].str.startswith("fault")]
    per_fault = recovery.faults(quiet, timeseries, results)
    assert per_fault.empty and recovery.points(quiet, per_fault, results).empty


def test_the_timeline_is_drawn_for_points_with_faults(tmp_path):
    results, timeseries, events = hand_built_run()
    per_fault = recovery.faults(events, timeseries, results)
    path = plots.timeline(results, timeseries, events, per_fault, tmp_path / "timeline.png")
    assert path == tmp_path / "timeline.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    empty = per_fault.iloc[0:0]
    assert plots.timeline(results, timeseries, events, empty, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_an_exit_belongs_to_the_latest_fault_into_that_worker():
    results, timeseries, _ = hand_built_run()
    events = pd.DataFrame(
        [
            event(2.0, "fault", "1", 0, "exception", id=0, how="armed"),
            event(2.1, "fault_fired", "1", 0, "exception", id=0),
            event(4.0, "fault", "1", 0, "sigkill", id=1, how="SIGKILL"),
            event(4.01, "exit", "1", 0, "crash"),
            event(4.5, "listening", "2", 0),
        ],
        columns=COLUMNS["events"],
    )
    per_fault = recovery.faults(events, timeseries, results).set_index("fault")
    assert pd.isna(per_fault.loc[0, "exit_kind"]) and pd.isna(per_fault.loc[0, "replacement"])
    assert per_fault.loc[1, "exit_kind"] == "crash" and per_fault.loc[1, "replacement"] == "2"
    assert per_fault.loc[1, "to_listening_s"] == pytest.approx(0.5)
