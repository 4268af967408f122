"""make trust's rules on rows as it builds them: a target-bound point well below wrk alone is a
problem, unless the kernel split that run's connections lopsidedly (then the rates do not
compare, and the table says so); a saturated target near wrk's rate must be target-bound."""

from bench.trust import Row, _problem_cell


def row(ratio, verdict, share, busiest=float("nan"), max_mean=float("nan")):
    return Row(
        "builtin",
        "keep-alive",
        "wrk",
        "none",
        2,
        1000 * ratio,
        1000,
        verdict,
        share,
        busiest,
        max_mean,
    )


def test_a_target_bound_point_below_0_8_of_wrk_is_a_problem():
    assert row(0.75, "target", 95).problem() == "target-bound at 0.75 × wrk (< 0.8)"
    # an even split with its busiest worker at its core does not excuse it
    assert row(0.75, "target", 60, busiest=95, max_mean=1.05).problem()


def test_a_lopsided_split_with_its_busiest_worker_at_its_core_is_not_comparable():
    # one worker held all 16 of 2 workers' connections (max/mean 2.0) and used 97 % of a core
    lopsided = row(0.75, "target", 49, busiest=97, max_mean=2.0)
    assert lopsided.problem() == ""
    assert _problem_cell(lopsided).startswith("ok: lopsided split (one worker 2.0× its share")
    # the target as a whole saturated: the split is no excuse
    assert row(0.75, "target", 95, busiest=97, max_mean=2.0).problem()


def test_a_saturated_target_near_wrk_that_is_not_target_bound_is_a_problem():
    assert row(0.95, "machine", 92).problem().endswith("but machine")
    assert row(0.95, "target", 92).problem() == ""
    assert row(0.85, "machine", 92).problem() == ""  # between 0.8 and 0.9: no rule
    assert _problem_cell(row(1.0, "machine", 60)) == "ok"
