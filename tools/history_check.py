"""Does ``clusterlab history check`` find a real change at the right run, and none in an A/A
history? Real runs, in order, into one history:

* ``--before`` (16) runs of a two-point scenario (the builtin ``/cpu?ms=2``, 1 worker, rr and
  none, one repeat of ~3 s each) — the A/A history;
* then ``--after`` (8) runs of the same scenario at ``/cpu?ms=2.3`` (+15 % CPU per request: a
  code change, so the scenario key stays the same).

Checks: the A/A history (the first 16 runs) shows no change point in the series that gate (the
figures that travel between machines) and ``history check`` finds it unchanged; change points in
the information-only series (rps, latency: machine-dependent) are listed. The whole history shows a change point in the throughput series (``rps_per_cpu`` of each policy, and
``rps``) at run 17 ± 1, a regression. Prints every run's figures and every change point found;
exit 0 when both hold, 1 otherwise. About 6 minutes on 2 cores; run it alone (on a shared
machine under the lab's lock: ``flock /tmp/clusterlab-load.lock .venv/bin/python
tools/history_check.py``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from clusterlab.lab.ci import history, trend
from clusterlab.lab.ci.compare import load_summary
from clusterlab.lab.config.scenario import load_scenario
from clusterlab.lab.output.text import plain_table
from clusterlab.lab.pipeline import run_lab
from clusterlab.lab.running.progress import ConsoleProgress

SCENARIO = """\
name = "history-check"
description = "tools/history_check.py: /cpu?ms={ms}, 1 worker, rr and none"
[target]
kind = "builtin"
[sweep]
workers = [1]
policies = ["rr", "none"]
repeats = 1
[workloads]
cpu = {{ "/cpu?ms={ms}" = 1 }}
[load]
users = 8
warmup = 1
duration = {duration}
connection = "keep-alive"
processes = 1
"""
THROUGHPUT = ("rps_per_cpu", "rps")


def _options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=int, default=16, help="A/A runs at --ms")
    parser.add_argument("--after", type=int, default=8, help="runs at --slower")
    parser.add_argument("--ms", default="2", help="CPU ms per request before")
    parser.add_argument("--slower", default="2.3", help="CPU ms per request after")
    parser.add_argument("--duration", type=float, default=2.0, help="each point's measured s")
    parser.add_argument("--out", type=Path, help="folder for the runs and the history (new)")
    parser.add_argument(
        "--judge", type=Path, metavar="DB", help="judge a history made before; run nothing"
    )
    return parser.parse_args()


def _run_all(args: argparse.Namespace, out: Path) -> Path:
    """Every run, oldest first, each added to ``out``/history.sqlite as revision rNN."""
    db = out / "history.sqlite"
    plan = [args.ms] * args.before + [args.slower] * args.after
    for n, ms in enumerate(plan, start=1):
        toml = out / f"ms{ms}.toml"
        if not toml.exists():
            toml.write_text(SCENARIO.format(ms=ms, duration=args.duration))
        lab = run_lab(load_scenario(toml), out / f"run{n:02d}", ConsoleProgress(quiet=True))
        if lab.outcome.interrupted:
            sys.exit(1)
        rec = history.record(load_summary(lab.out_dir), str(lab.out_dir), revision=f"r{n:02d}")
        history.add(db, rec)
        why = "" if rec.run["trusted"] else f"  untrusted: {rec.run['distrust']}"
        print(f"run {n:2d} /cpu?ms={ms}: added{why}", flush=True)
    return db


def _changes(result: trend.HistoryCheck, gating: bool | None = None) -> list[list[object]]:
    """Rows of every change point (of the gated series only, or of the others only)."""
    return [
        [
            s.name + ("" if s.gating else " (info)"),
            c.kind,
            c.run,
            c.commits,
            f"{c.point.change:+.1%}",
            f"{c.point.p_value:.3f}",
        ]
        for s in result.series
        if gating is None or s.gating == gating
        for c in s.changes
    ]


def _figures(data: object) -> str:
    import pandas as pd

    assert isinstance(data, pd.DataFrame)
    mine = data[data["metric"].isin(THROUGHPUT)]
    wide = mine.pivot_table(index="run", columns=["metric", "group"], values="value")
    rows = [[run, *(f"{v:.1f}" for v in values)] for run, values in wide.iterrows()]
    return plain_table(["run", *(f"{m} {g}" for m, g in wide.columns)], rows)


def main() -> int:
    args = _options()
    if args.judge is not None:
        db = args.judge
    else:
        out = args.out or Path(tempfile.mkdtemp(prefix="history-check-"))
        out.mkdir(parents=True, exist_ok=args.out is None)
        db = _run_all(args, out)
    listed = history.series_list(db)
    key, fp = listed.iloc[0]["scenario_key"], listed.iloc[0]["fingerprint"]
    data = history.load_series(db, key, fp)
    print(_figures(data))
    aa = trend.check(data[data["run"] <= args.before], trend.Settings())
    full = trend.check(data, trend.Settings())
    headers = ["series", "kind", "run", "commits", "change", "p"]
    print(
        f"\nA/A history ({args.before} runs): {len(_changes(aa, True))} change point(s) in the "
        f"gated series, {len(_changes(aa, False))} in the information-only ones "
        f"(machine-dependent: rps, latency)"
    )
    print(plain_table(headers, _changes(aa)))
    print(f"\nwhole history ({len(set(data['run']))} runs):")
    print(plain_table(headers, _changes(full)))
    step = args.before + 1
    found = [
        c
        for s in full.series
        if s.metric in THROUGHPUT
        for c in s.changes
        if c.kind == "regression" and abs(c.run - step) <= 1
    ]
    aa_ok, step_ok = not _changes(aa, True) and aa.outcome == "unchanged", bool(found)
    print(
        f"\nA/A: {aa.outcome}, "
        f"{'no change point in a gated series' if aa_ok else 'FALSE change points'}; "
        f"step at run {step}: {'found' if step_ok else 'NOT found'} "
        f"({', '.join(f'run {c.run} {c.point.change:+.1%}' for c in found)}); history in {db}"
    )
    return 0 if aa_ok and step_ok else 1


if __name__ == "__main__":
    sys.exit(main())
