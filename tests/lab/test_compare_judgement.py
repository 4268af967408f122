"""What a comparison may judge: untrusted points (outside CPU, a verdict other than "target", no
verdict in a version 1–2 summary, a failed point) in both runs' rows, and the three outcomes
(unchanged, regression, inconclusive) with their exit statuses and headlines, on synthetic and
on recorded summaries."""

import json
from pathlib import Path

import pytest
from compare_fixtures import edit_points, summary

from clusterlab.lab.ci import outputs
from clusterlab.lab.ci.compare import compare, load_summary, point_distrust

pytestmark = pytest.mark.parallel_ok  # starts no load: runs beside the cluster tests

BASE = {("cpu", "rr", 1): [500, 510, 490, 505, 495], ("cpu", "rr", 2): [900, 910, 890, 905, 895]}
SLOW = {("cpu", "rr", 1): [400, 408, 392, 404, 396], ("cpu", "rr", 2): [720, 728, 712, 724, 716]}
RECORDED = Path(__file__).parent / "data" / "compare"


def workers(n):
    return lambda p: p["workers"] == n


def test_a_trusted_point_is_target_bound_with_little_outside_cpu():
    point = summary(BASE)["points"][0]
    assert point_distrust(point, 3) == ((), ())
    assert point_distrust({**point, "cpu_pct": {"other": 25.0}}, 3) == ((), ())  # at the limit


@pytest.mark.parametrize(
    ("change", "kind", "reason"),
    [
        (
            {"cpu_pct": {"other": 40.0}},
            "outside CPU",
            "outside CPU 40 % of a core (limit 25 %)",
        ),
        (
            {"verdict": "generator", "verdict_reason": "a locust process used 98% of a core"},
            "verdict generator",
            "not target-bound: verdict 'generator' (a locust process used 98% of a core)",
        ),
        (
            {"verdict": "machine", "verdict_reason": "CPUs 97% busy"},
            "verdict machine",
            "not target-bound: verdict 'machine' (CPUs 97% busy)",
        ),
        (
            {"verdict": "unsaturated", "verdict_reason": None},
            "verdict unsaturated",
            "not target-bound: verdict 'unsaturated' (no reason recorded)",
        ),
        (
            {"status": "failed", "error": "target did not start", "verdict": None},
            "failed",
            "point failed: target did not start",
        ),
    ],
)
def test_each_untrusted_rule_names_its_reason(change, kind, reason):
    point = {**summary(BASE)["points"][0], **change}
    assert point_distrust(point, 3) == ((kind,), (reason,))


def test_a_point_without_a_verdict_is_never_silently_trusted():
    point = summary(BASE, legacy=True)["points"][0]
    assert point_distrust(point, 2) == (
        ("no verdict",),
        ("no saturation verdict recorded (summary v2): record the baseline again",),
    )


def test_the_outside_cpu_limit_is_configurable():
    point = {**summary(BASE)["points"][0], "cpu_pct": {"other": 40.0}}
    assert point_distrust(point, 3, max_other_cpu=50) == ((), ())


def test_an_untrusted_baseline_point_makes_its_rows_untrusted_in_both_runs():
    noisy = edit_points(summary(BASE), lambda p: p["workers"] == 1 and p["repeat"] == 4, other=60)
    result = compare(noisy, summary(BASE))
    untrusted = [r for r in result.rows if r.verdict == "untrusted"]
    # every metric of cpu/rr/1, and scaling efficiency at 2 workers (it divides by 1 worker)
    assert {(r.metric, r.name) for r in untrusted} == {
        *((m, "cpu/rr/1") for m in ("rps", "p50_ms", "p99_ms", "failure_ratio", "fairness.jain")),
        ("scaling_efficiency", "cpu/rr/2"),
    }
    rps = next(r for r in untrusted if r.metric == "rps")
    assert rps.untrusted == ("baseline r4 (outside CPU)",)
    assert rps.note == "untrusted: baseline r4 (outside CPU); the interval alone says unchanged"
    assert rps.interval is not None  # shown for information
    scaling = next(r for r in untrusted if r.metric == "scaling_efficiency")
    assert scaling.untrusted == ("baseline cpu/rr/1 r4 (outside CPU)",)
    assert [(d.run, d.name, d.repeat) for d in result.untrusted] == [("baseline", "cpu/rr/1", 4)]
    assert result.outcome == "inconclusive" and result.exit_status == 3


def test_an_untrusted_regression_is_inconclusive_not_a_regression():
    """A CPU burner beside the current run slows it down: that is not the code's doing."""
    burned = edit_points(
        summary(SLOW), lambda p: True, other=100.0, verdict="machine", verdict_reason="CPUs full"
    )
    result = compare(summary(BASE), burned)
    assert not result.regressions and result.outcome == "inconclusive"
    rps = next(r for r in result.rows if r.metric == "rps")
    assert rps.note.endswith("the interval alone says worse")
    assert "current r0–r4 (verdict machine, outside CPU)" in rps.note
    lines = outputs.untrusted_lines(result)
    assert lines == [
        "current cpu/rr/1 r0–r4, cpu/rr/2 r0–r4: not target-bound: verdict 'machine' (CPUs full)",
        "current cpu/rr/1 r0–r4, cpu/rr/2 r0–r4: outside CPU 100 % of a core (limit 25 %)",
    ]


def test_a_generator_bound_current_run_cannot_pass():
    result = compare(summary(BASE), summary(BASE, verdict="generator"))
    assert result.outcome == "inconclusive"
    assert all(r.verdict == "untrusted" for r in result.rows)


def test_regression_wins_over_inconclusive_and_the_headline_says_both():
    current = edit_points(summary(SLOW), workers(2), other=80.0)
    result = compare(summary(BASE), current)
    assert result.outcome == "regression" and result.exit_status == 1
    assert [(r.metric, r.name) for r in result.regressions] == [
        ("rps", "cpu/rr/1"),
        ("p50_ms", "cpu/rr/1"),
    ]
    assert outputs.headline(result).endswith("; 6 more gated row(s) could not be judged")


def test_one_repeat_a_side_is_inconclusive_never_no_regression():
    one = summary({("cpu", "rr", 1): [500], ("cpu", "rr", 2): [900]})
    result = compare(one, one)
    assert result.outcome == "inconclusive" and result.exit_status == 3
    assert {r.verdict for r in result.rows} == {"not comparable"}
    line = outputs.headline(result)
    assert line.startswith("INCONCLUSIVE: 11 gated row(s) could not be judged — insufficient")
    assert "no regression" not in outputs.terminal(result)


def test_a_group_missing_in_the_current_run_cannot_pass():
    current = summary({("cpu", "rr", 1): BASE[("cpu", "rr", 1)]})
    result = compare(summary(BASE), current)
    assert result.outcome == "inconclusive"
    assert "missing in one run: rps cpu/rr/2" in outputs.headline(result)


def test_information_only_rows_do_not_decide_and_nothing_gated_is_inconclusive():
    other = summary({("cpu", "rr", 1): [250, 255, 245, 252, 248]}, cpu_model="Other CPU")
    base = summary({("cpu", "rr", 1): BASE[("cpu", "rr", 1)]})
    result = compare(base, other)
    assert {r.metric for r in result.gated} == {"failure_ratio", "fairness.jain"}
    assert result.outcome == "unchanged"
    assert outputs.headline(result).endswith("; 3 information only")
    assert compare(base, other, calibrated={}, thresholds={}).exit_status == 0
    empty = {**base, "points": []}
    nothing = compare(empty, empty)
    assert nothing.outcome == "inconclusive" and "nothing gated" in outputs.headline(nothing)


def test_calibrated_thresholds_are_used_by_group_then_metric_and_said():
    calibrated = {"rps": {"cpu/rr/1": 0.3, "*": 0.05}}
    result = compare(
        summary(BASE),
        summary(SLOW),
        thresholds={"p50_ms": 0.3},
        calibrated=calibrated,
        calibration="thresholds.json of main",
        default_threshold=0.35,  # above every calibrated one: none is capped here
    )
    rows = {(r.metric, r.name): r for r in result.rows}
    assert (rows[("rps", "cpu/rr/1")].threshold, rows[("rps", "cpu/rr/1")].threshold_source) == (
        0.3,
        "calibrated",
    )
    assert rows[("rps", "cpu/rr/2")].threshold == 0.05
    assert rows[("p50_ms", "cpu/rr/1")].threshold_source == "--threshold"
    assert rows[("p99_ms", "cpu/rr/1")].threshold_source == "default"
    # 0.8 (interval 0.776–0.824) is inside 1/1.3 but beyond 1/1.05
    assert rows[("rps", "cpu/rr/1")].verdict == "unchanged"
    assert rows[("rps", "cpu/rr/2")].verdict == "worse"
    line = outputs.thresholds_line(result)
    assert line.startswith("thresholds (calibrated: thresholds.json of main): rps 30.0 % ")
    assert "rps 30.0 % calibrated / 5.0 % calibrated, p50_ms 30.0 % --threshold" in line


def test_a_calibrated_threshold_above_the_default_is_capped_so_a_10_pct_drop_is_never_unchanged():
    # a host whose calibration measured 11.4 % noise on rps: uncapped, a tight 10 % drop
    # (interval about 0.898–0.902) sits inside 1/1.114 and would pass as "unchanged"
    tight = {("cpu", "rr", 1): [500, 500.2, 499.8, 500.1, 499.9]}
    slower = {key: [0.9 * v for v in values] for key, values in tight.items()}
    calibrated = {"rps": {"cpu/rr/1": 0.114}, "p50_ms": {"*": 0.06}}
    result = compare(summary(tight), summary(slower), calibrated=calibrated, calibration="main")
    rows = {(r.metric, r.name): r for r in result.rows}
    rps = rows[("rps", "cpu/rr/1")]
    assert (rps.threshold, rps.threshold_source, rps.verdict) == (0.10, "capped", "worse")
    assert rows[("p50_ms", "cpu/rr/1")].threshold_source == "calibrated"  # below: kept
    assert result.outcome == "regression"
    (warning,) = [w for w in result.warnings if "capped" in w]
    assert "rps cpu/rr/1 11.4 %" in warning and "10 % default" in warning
    assert "rps 10.0 % capped" in outputs.thresholds_line(result)
    # the same data under the user's wider default keeps the calibrated 11.4 %
    wide = compare(summary(tight), summary(slower), calibrated=calibrated, default_threshold=0.2)
    rps = {(r.metric, r.name): r for r in wide.rows}[("rps", "cpu/rr/1")]
    assert (rps.threshold, rps.threshold_source, rps.verdict) == (0.114, "calibrated", "unchanged")
    assert not [w for w in wide.warnings if "capped" in w]


def test_a_recorded_version_2_run_is_read_and_untrusted():
    """tests/lab/data/compare/sweep-v2-summary.json: a real sweep (2 repeats) recorded by the
    lab before summaries had verdicts."""
    sweep = load_summary(RECORDED / "sweep-v2-summary.json")
    assert sweep["schema_version"] == 2
    result = compare(sweep, sweep)
    assert result.outcome == "inconclusive" and result.exit_status == 3 and result.rows
    assert {r.verdict for r in result.rows} == {"untrusted"}
    reason = "no saturation verdict recorded (summary v2): record the baseline again"
    assert all(d.reasons == (reason,) for d in result.untrusted)
    assert len(result.untrusted) == 2 * len(sweep["points"])
    # what the interval could not have said either: 2 repeats a side
    assert all("insufficient repeats (2 vs 2" in r.note for r in result.rows)
    data = json.loads(outputs.to_json(result))["compare"]
    assert data["outcome"] == "inconclusive" and data["exit_status"] == 3
