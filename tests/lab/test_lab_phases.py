"""Where a run's wall time goes (``phases.csv``): the timeline adds up by construction, the latency
grid is read in one pass, the bench prints each phase. A real ``clusterlab run`` (two targets)
recording every phase of its points, adding up to its wall time measured from outside, with its
first target gone before the second point's load starts: test_lab_run_end_to_end.py."""

import pytest
from hdrh.histogram import HdrHistogram

from clusterlab.lab.protocol import HISTOGRAM_RANGE_US
from clusterlab.lab.running.load import GRID, latency_points
from clusterlab.lab.running.phases import PHASES, PhaseLog

# No process: a real run's phases are checked on the tiny run of test_lab_run_end_to_end.py.
pytestmark = pytest.mark.parallel_ok


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
