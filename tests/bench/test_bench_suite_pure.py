"""bench.suite's pure parts: targets, ratios, rendering, the RSS trend, the scaling ideal, the lab
figures and argument parsing. No wrk, no node, no process started (the suite itself is run with
``python -m bench.suite``, not from here)."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest

from bench import suite, wrk
from bench.suite import Row, Target


def test_target_met_and_text() -> None:
    at_least, at_most = Target(">=", 1.5), Target("<=", 0.5)
    assert at_least.met(1.5) is True and at_least.met(1.49) is False
    assert at_most.met(0.5) is True and at_most.met(0.51) is False
    assert at_least.met(None) is None and at_most.met(math.nan) is None
    assert str(at_least) == "≥ 1.5×" and str(at_most) == "≤ 0.5×"
    assert str(Target(">=", 1.0)) == "≥ 1.0×" and str(Target("<=", 1.15)) == "≤ 1.15×"


def test_ratio_and_formatting() -> None:
    assert suite.ratio(3.0, 2.0) == 1.5
    assert suite.ratio(None, 2.0) is None and suite.ratio(1.0, 0.0) is None
    assert suite.ratio(1.0, None) is None and suite.ratio(math.nan, 1.0) is None
    assert suite.fmt_ratio(1.256) == "1.26×" and suite.fmt_ratio(None) == "—"
    st = suite.stats([14383.2, 11900.0, 14826.0])
    assert st is not None and st["median"] == 14383.2
    assert suite.fmt_stats(st, "req/s") == "14,383 req/s (11,900–14,826)"
    assert suite.fmt_stats(suite.stats([79.14]), "ms", 1) == "79.1 ms"
    assert suite.fmt_stats(None) == "—" and suite.stats([]) is None


def test_row_met_follows_a_ratio_target() -> None:
    assert Row("x", "1", ratio=1.6, target=Target(">=", 1.5)).met is True
    assert Row("x", "1", ratio=1.2, target=Target(">=", 1.5)).met is False
    assert Row("x", "1", target=Target(">=", 1.5)).met is None  # peer skipped: no verdict
    text_target = Row("x", "1", target="reported", met=None, note="why")
    assert text_target.cells()[-2:] == ["reported", "— (why)"]
    cells = Row("RR", "10 req/s", "Node.js", "8", 1.25, Target(">=", 1.5)).cells()
    assert cells == ["RR", "10 req/s", "Node.js", "8", "1.25×", "≥ 1.5×", "no"]
    d = Row("RR", "1", ratio=2.0, target=Target(">=", 1.5)).as_dict()
    assert d["target"] == "≥ 1.5×" and d["met"] is True and d["cells"][-1] == "yes"


def test_markdown_has_machine_header_table_and_notes() -> None:
    rows = [
        Row("a | b", "1 req/s", "Node.js", "2", 0.5, Target(">=", 1.0)),
        Row("c", "skipped", note="wrk not installed"),
    ]
    machine = {
        "cpu_model": "AMD EPYC",
        "cpu_count": 2,
        "available_parallelism": 2,
        "memory_gb": 23.5,
        "kernel": "6.18",
        "python": "3.11.7",
        "node": "v20.20.2",
        "wrk": "wrk 4.1.0",
        "load_average": [0.25, 0.1, 0.0],
    }
    md = suite.render_markdown(
        rows,
        machine,
        ["node-rr: skipped, node not on PATH"],
        "python -m bench.suite --quick",
        "2026-11-28 05:00 UTC",
        150.4,
        "bench/results/x.json",
        {"handoff": 80.4, "primary": 65.2},
    )
    lines = md.splitlines()
    assert (
        lines[2] == "Time per row: handoff 80 s, primary 65 s; total 146 s (rest of the run 5 s)."
    )
    assert lines[0].startswith("Machine: AMD EPYC, 2 CPUs (available_parallelism 2)")
    assert "load average at start 0.25" in lines[0]
    assert "`python -m bench.suite --quick`" in lines[1] and "150 s" in lines[1]
    table = [ln for ln in lines if ln.startswith("|")]
    cells = [[c.strip() for c in re.split(r"(?<!\\)\|", ln)[1:-1]] for ln in table]
    assert cells[0] == ["row", "clusterlab", "peer", "peer figure", "ratio", "target", "met?"]
    assert set(table[1]) <= set("|-: ")
    assert cells[2] == ["a \\| b", "1 req/s", "Node.js", "2", "0.50×", "≥ 1.0×", "no"]
    assert cells[3][-2:] == ["—", "— (wrk not installed)"]
    assert lines[-1] == "* node-rr: skipped, node not on PATH"
    # The terminal table carries the same cells.
    text = suite.render_text(rows)
    assert "0.50×" in text and "met?" in text.splitlines()[0]


def test_time_line_sums_the_rows_and_shows_the_rest() -> None:
    line = suite.time_line({"engines": 61.6, "ipc": 30.0, "scaling": 0.4}, 100.0)
    assert line == "engines 62 s, ipc 30 s, scaling 0 s; total 92 s (rest of the run 8 s)"
    assert suite.time_line({"ipc": 3.0}) == "ipc 3 s; total 3 s"
    no_rows = suite.render_markdown([Row("a", "1")], when="now", wall_s=5.0)
    assert "Time per row" not in no_rows


def test_every_step_gets_its_wall_time_also_when_it_fails(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def fails() -> None:
        raise RuntimeError("no server")

    s = suite.Suite(suite.Settings())
    status = suite._run_steps(s, [("fine", lambda: None), ("broken", fails)])
    assert status == 1 and list(s.row_seconds) == ["fine", "broken"]
    assert all(secs >= 0 for secs in s.row_seconds.values())
    out = capsys.readouterr().out.splitlines()
    assert "row fine: 0 s" in out and "row broken: 0 s" in out
    assert [r.what for r in s.rows] == ["broken"] and s.rows[0].clusterlab == "failed"


def test_the_schedulers_join_the_handoff_rounds_when_rr_runs() -> None:
    def names(only: str) -> list[str]:
        s = suite.Suite(suite.Settings())
        return [name for name, _ in suite._steps(s, suite.parse_only(only))]

    assert names("")[:2] == ["handoff+policies", "keepalive"]
    assert "policies" not in names("")
    assert names("none,policies") == ["handoff", "policies"]  # no rr to share
    assert names("policies") == ["policies"]


def test_anchored_rounds_warm_each_other_and_put_it_between_two_anchor_samples() -> None:
    order = wrk.anchored_order("rr", ["a", "b"], 2)
    # b is warmed up right after a's last sample: the anchor sample after it is shared.
    assert order == ["warm:a", "rr", "a", "rr", "a", "warm:b", "rr", "b", "rr", "b", "rr"]
    # The machine slows down all along: rr 100 -> 50; a and b run at 0.9x and 0.8x of rr at
    # their moment. Paired ratios see that; ratios of medians would not (a: 0.9 x 95 / 80).
    clock = iter(range(100))
    speed = {"rr": 1.0, "a": 0.9, "b": 0.8}
    seen: list[str] = []

    def sampler(name: str):  # type: ignore[no-untyped-def]
        def sample() -> float:
            seen.append(name)
            return speed[name] * (100 - 5 * next(clock))

        return sample

    samples, paired = wrk.anchored_rounds(
        {n: sampler(n) for n in speed}, "rr", 2, lambda name: seen.append(f"warm:{name}")
    )
    assert seen == order and len(samples["rr"].samples) == 5
    assert {n: [round(r, 3) for r in st.samples] for n, st in paired.items()} == {
        "a": [0.9, 0.9],
        "b": [0.8, 0.8],
    }


def test_paired_ratios_of_rows_and_their_spread() -> None:
    def entry(paired: list[float] | None, anchor: str = "clusterlab-rr") -> dict[str, Any]:
        out: dict[str, Any] = {"samples": [1.0], "median": 1.0}
        if paired is not None:
            out["paired"] = {"anchor": anchor, "samples": paired}
        return out

    res = {
        "clusterlab-rr": entry(None),
        "node-rr": entry([0.5, 0.4, 0.5]),
        "clusterlab-p2c": entry([0.95, 0.85, 1.02]),
        "clusterlab-none": entry([1.2, 1.1, 1.0]),
        "node-none": entry([1.0, 1.1, 1.25]),
    }
    p2c = suite.paired_ratio(res, "clusterlab-p2c", "clusterlab-rr")
    assert p2c is not None and p2c["median"] == 0.95 and (p2c["min"], p2c["max"]) == (0.85, 1.02)
    assert suite.within_spread(p2c) is True and "0.85–1.02 (3 paired rounds)" in suite.paired_note(
        p2c
    )
    rr_vs_node = suite.paired_ratio(res, "clusterlab-rr", "node-rr")
    assert rr_vs_node is not None and rr_vs_node["samples"] == [2.0, 2.5, 2.0]
    none = suite.paired_ratio(res, "clusterlab-none", "node-none")
    assert none is not None and none["samples"] == [1.2, 1.0, 0.8]
    slower = suite.paired_ratio({**res, "x": entry([0.9, 0.97, 0.95])}, "x", "clusterlab-rr")
    assert suite.within_spread(slower) is False
    unpaired = {"clusterlab-none": {"samples": [1.0]}, "node-none": {"samples": [1.0]}}
    assert suite.paired_ratio(unpaired, "clusterlab-none", "node-none") is None
    assert suite.within_spread(None) is None and suite.paired_note(None) == ""


def test_engine_figures_one_per_measured_repeat() -> None:
    point = {"status": "ok", "rps": 900.0, "cpu_pct": {"generator": 25.0}, "verdict": "target"}
    summary = {
        "points": [
            {**point, "repeat": 0},
            {**point, "repeat": 1, "rps": 880.0},
            {**point, "repeat": 2, "status": "failed"},
        ]
    }
    found = suite.engine_figures(summary)
    assert [(f["repeat"], f["rps"], f["load_cpu_pct"]) for f in found] == [
        (0, 900.0, 25.0),
        (1, 880.0, 25.0),
    ]


def test_rss_trend_slope_and_flatness() -> None:
    flat = [(float(t), 30.0) for t in range(301)]
    trend = suite.rss_trend(flat)
    assert trend["start_mib"] == 30.0 and trend["max_mib"] == 30.0
    assert abs(trend["slope_mib_per_min"]) < 1e-9 and trend["span_s"] == 300
    assert suite.rss_flat(trend) is True
    growing = [(float(t), 30.0 + t / 60) for t in range(301)]  # 1 MiB per minute
    trend = suite.rss_trend(growing)
    assert trend["slope_mib_per_min"] == pytest.approx(1.0)
    assert trend["end_mib"] == pytest.approx(35.0) and suite.rss_flat(trend) is False
    # A warm-up jump in the first tenth of the run does not count as growth.
    warm = [(float(t), 25.0 if t < 20 else 30.0) for t in range(301)]
    trend = suite.rss_trend(warm)
    assert trend["start_mib"] == 25.0 and abs(trend["slope_mib_per_min"]) < 1e-9
    assert suite.rss_flat(trend) is True
    short = suite.rss_trend([(float(t), 30.0 + t) for t in range(20)])
    assert suite.rss_flat(short) is None  # 20 s: reported, not judged
    assert suite.rss_trend([]) == {} and suite.rss_flat({}) is None


def test_scaling_ideal_takes_off_the_generator() -> None:
    assert suite.scaling_ideal(2, 2, 0.0) == 2.0
    assert suite.scaling_ideal(2, 2, 0.3) == pytest.approx(1.7)
    assert suite.scaling_ideal(4, 16, 0.5) == 4.0  # enough cores: N itself
    assert suite.scaling_ideal(16, 16, 1.0) == 15.0
    assert suite.scaling_ideal(2, 1, 0.5) == 1.0  # never below 1


def test_parse_only_and_workers() -> None:
    assert suite.parse_only(None) == [r for r in suite.ROWS if r != "reuseport"]
    assert suite.parse_only("all") == list(suite.ROWS)
    assert suite.parse_only("lab-overhead,scaling") == ["scaling", "lab-overhead"]
    assert suite.parse_only("handoff,primary") == ["rr", "none", "reuseport", "primary"]
    with pytest.raises(ValueError, match="unknown row 'bogus'"):
        suite.parse_only("scaling,bogus")
    assert suite.parse_workers(None, 2) == [1, 2]
    assert suite.parse_workers(None, 1) == [1]
    assert suite.parse_workers("16,2,4,8", 16) == [1, 2, 4, 8, 16]
    with pytest.raises(ValueError):
        suite.parse_workers("0,2", 2)


def test_lab_figures_read_durations_from_the_summary() -> None:
    summary = {
        "scenario": {"load": {"warmup": 1, "duration": 5}},
        "run": {"started": 100.0, "finished": 114.0},
        "points": [
            {"point": 0, "status": "ok", "window_s": 5.01, "workload": "hello"},
            {"point": 1, "status": "ok", "window_s": 4.99, "workload": "hello"},
            {"point": 2, "status": "failed", "window_s": None, "workload": "hello"},
        ],
    }
    fig = suite.lab_figures(summary, 15.0)
    assert fig["points"] == 2 and fig["failed_points"] == 1
    assert fig["load_s"] == 12.0 and fig["window_s"] == pytest.approx(10.0)
    assert fig["run_started_to_finished_s"] == 14.0
    assert fig["wall_s"] / fig["load_s"] == 1.25
    summary["points"] = [summary["points"][2]]
    with pytest.raises(RuntimeError, match="no point"):
        suite.lab_figures(summary, 15.0)


def test_missing_wrk_skips_its_rows_without_starting_anything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(suite.shutil, "which", lambda name: None)
    run = suite.Suite(suite.Settings())
    run.handoff(["rr", "none"])
    run.scaling()
    assert [r.clusterlab for r in run.rows] == ["skipped"] * 3
    assert all(r.note == "wrk not installed" and r.met is None for r in run.rows)


def test_quiet_budget_and_freshness() -> None:
    from bench.report import Quiet

    q = Quiet(budget_s=10.0, fresh_s=60.0)
    assert q.left() == 10.0 and q.recently_quiet(5.0) is None
    q.charge(4.0)
    assert q.left() == 6.0
    q.saw(3.0)
    assert q.recently_quiet(5.0) == 3.0  # quiet a moment ago: no need to wait again
    q.saw(30.0)
    assert q.recently_quiet(5.0) is None
    q.charge(20.0)
    assert q.left() == 0.0
    assert Quiet().left() == math.inf
