"""The report's conclusions in words (``output.conclusions``): a difference is called only when
the repeats' ranges do not overlap, and never from one repeat."""

import pandas as pd
import pytest

from clusterlab.lab.output.conclusions import policy_lines, worker_lines

pytestmark = pytest.mark.parallel_ok  # starts no load: runs beside the cluster tests


def group(policy, workers, rps, low, high, repeats=3):
    return dict(
        workload="cpu",
        policy=policy,
        workers=workers,
        rps=rps,
        rps_min=low,
        rps_max=high,
        repeats=repeats,
    )


def test_a_policy_is_called_faster_only_when_the_ranges_do_not_overlap():
    apart = pd.DataFrame([group("rr", 2, 900, 880, 910), group("none", 2, 500, 450, 560)])
    assert policy_lines(apart) == [
        "cpu, 2 workers: rr is faster, 1.80× none (req/s: rr 900, none 500)."
    ]
    close = pd.DataFrame([group("rr", 2, 900, 850, 910), group("none", 2, 880, 860, 900)])
    assert "a tie between rr and none within the spread" in policy_lines(close)[0]
    once = pd.DataFrame([group("rr", 2, 900, 900, 900, 1), group("none", 2, 500, 500, 500, 1)])
    assert "in one repeat: not tested" in policy_lines(once)[0]


def test_more_workers_stop_paying_only_when_repeats_show_it():
    shown = pd.DataFrame([group("rr", 2, 900, 880, 910), group("rr", 4, 800, 780, 820)])
    (line,) = worker_lines(shown)
    assert "0.89× the req/s" in line and "more workers stopped paying after 2" in line
    once = pd.DataFrame([group("rr", 2, 900, 900, 900, 1), group("rr", 4, 800, 800, 800, 1)])
    (line,) = worker_lines(once)
    assert "stopped paying" not in line and "the most req/s at 2 (one repeat: not tested)" in line
