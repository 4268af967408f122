"""``clusterlab history add | show | check``: the command line of the run history (``history.py``)
and its check (``trend.py``). Importing this module is light (the CLI builds its parser from it);
pandas and the rest load when a command runs."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from clusterlab.lab.ci.history import Record
    from clusterlab.lab.ci.trend import Settings

EXIT_BAD_INPUT = 2


def add_parser(sub: argparse._SubParsersAction) -> None:
    history = sub.add_parser(
        "history",
        help="a history of CI runs: add a run, show a metric over time, check for change "
        "points (exit 0 none, 1 regression, 3 inconclusive, 2 bad input)",
    )
    hsub = history.add_subparsers(dest="action", required=True, metavar="ACTION")
    db = argparse.ArgumentParser(add_help=False)
    db.add_argument(
        "--db",
        type=Path,
        help="the history file (default: $CLUSTERLAB_HISTORY, else .clusterlab/history.sqlite)",
    )
    add = hsub.add_parser("add", parents=[db], help="append a run to the history")
    add.add_argument("run", type=Path, help="a run directory or its summary.json")
    add.add_argument("--revision", help="its commit (default: $GITHUB_SHA, else the run's)")
    add.add_argument("--branch", help="its branch (default: $GITHUB_HEAD_REF or $GITHUB_REF_NAME)")
    add.add_argument("--scenario", help="refuse a run of any other scenario")
    pick = argparse.ArgumentParser(add_help=False, parents=[db])
    pick.add_argument("--scenario", help="the scenario's series (default: the newest run's)")
    pick.add_argument("--fingerprint", help="the machine fingerprint (default: the newest run's)")
    pick.add_argument("--last", type=int, default=100, help="the last N runs (default 100)")
    _options(pick)
    show = hsub.add_parser(
        "show", parents=[pick], help="the series in the history, or METRIC's runs over time"
    )
    show.add_argument("metric", nargs="?", help="e.g. rps_per_cpu, rr_none_ratio, rps")
    show.add_argument("--plot", type=Path, help="draw METRIC over time here (PNG)")
    check = hsub.add_parser(
        "check", parents=[pick], help="change points of every metric over the last N runs"
    )
    check.add_argument(
        "--with",
        dest="current",
        type=Path,
        metavar="RUN",
        help="judge this run as the newest, without adding it (a pull request's run)",
    )
    for flag, what in (("--markdown", "Markdown"), ("--json", "JSON")):
        check.add_argument(flag, type=Path, help=f"write the check as {what} here")
    check.add_argument("--plot-dir", type=Path, help="draw every gated metric here (PNG)")
    check.add_argument("-q", "--quiet", action="store_true", help="only the headline")


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--alpha", type=float, default=0.01, help="a change point's p at most")
    parser.add_argument(
        "--min-change", type=float, default=5.0, metavar="PCT", help="smallest change, in %%"
    )
    parser.add_argument("--min-size", type=int, default=3, help="runs on each side of a change")
    parser.add_argument(
        "--recent", type=int, default=10, help="a regression among the last N runs fails the check"
    )
    parser.add_argument("--min-runs", type=int, default=10, help="trusted runs a series needs")
    parser.add_argument("--sigmas", type=float, default=4.0, help="the newest run's σ rule")
    parser.add_argument(
        "--absolute",
        action="store_true",
        help="let machine-dependent figures (rps, latency) gate too: one stable CI machine",
    )


def _settings(args: argparse.Namespace) -> Settings:
    from clusterlab.lab.ci.trend import Settings

    if not (
        0 < args.alpha < 1
        and args.min_change >= 0
        and args.min_size >= 1
        and args.last >= 2
        and args.recent >= 0
        and args.min_runs >= 2
        and args.sigmas > 0
    ):
        raise ValueError(
            "history: expected 0 < --alpha < 1, --min-change ≥ 0, --min-size ≥ 1, --last ≥ 2, "
            f"--recent ≥ 0, --min-runs ≥ 2, --sigmas > 0; got {args.alpha}, {args.min_change}, "
            f"{args.min_size}, {args.last}, {args.recent}, {args.min_runs}, {args.sigmas}"
        )
    return Settings(
        last=args.last,
        alpha=args.alpha,
        min_size=args.min_size,
        min_change=args.min_change / 100,
        recent=args.recent,
        min_runs=args.min_runs,
        sigmas=args.sigmas,
        absolute=args.absolute,
    )


def _record(run: Path, expected: str | None, args: argparse.Namespace) -> Record:
    from clusterlab.lab.ci import history
    from clusterlab.lab.ci.compare import load_summary

    summary = load_summary(run)
    name = summary["scenario"].get("name")
    if expected and name != expected:
        raise history.HistoryError(
            f"{run}: expected a run of scenario {expected!r}, got one of {name!r}"
        )
    env = os.environ
    return history.record(
        summary,
        str(run),
        getattr(args, "revision", None) or env.get("GITHUB_SHA") or None,
        getattr(args, "branch", None)
        or env.get("GITHUB_HEAD_REF")
        or env.get("GITHUB_REF_NAME")
        or None,
    )


def _add(args: argparse.Namespace) -> int:
    from clusterlab.lab.ci import history

    db = args.db or history.default_path()
    rec = _record(args.run, args.scenario, args)
    run, added = history.add(db, rec)
    trust = "" if rec.run["trusted"] else f" (untrusted: {rec.run['distrust']})"
    verb = "added as" if added else "already in the history as"
    print(
        f"{args.run}: {verb} run {run} of {rec.run['scenario_key']} on "
        f"{rec.run['fingerprint']} in {db}{trust}"
    )
    return 0


def _series(args: argparse.Namespace, current: Record | None) -> tuple[pd.DataFrame, str]:
    """The series view to judge (the stored runs of one scenario key and fingerprint, with
    ``current`` appended), and what the newest run is."""
    import pandas as pd

    from clusterlab.lab.ci import history

    db = args.db or history.default_path()
    if current is not None:
        key, fp = current.run["scenario_key"], current.run["fingerprint"]
        data = history.load_series(db, key, fp)
        data = data[data["started"] != current.run["started"]]
        extra = history.frame(current, run=int(data["run"].max() + 1) if len(data) else 1)
        return pd.concat([data, extra], ignore_index=True), f"{current.run['source']}"
    listed = history.series_list(db)
    if args.scenario:
        listed = listed[listed["scenario"] == args.scenario]
    if args.fingerprint:
        listed = listed[listed["fingerprint"].str.startswith(args.fingerprint)]
    if listed.empty:
        raise history.HistoryError(
            f"{db}: expected runs of scenario {args.scenario or '(any)'} on fingerprint "
            f"{args.fingerprint or '(any)'}, got none"
        )
    first = listed.iloc[0]
    return history.load_series(db, first["scenario_key"], first["fingerprint"]), "newest"


def _show(args: argparse.Namespace) -> int:
    from clusterlab.lab.ci import history, trend
    from clusterlab.lab.ci import history_outputs as out
    from clusterlab.lab.output.text import plain_table

    settings = _settings(args)
    if args.metric is None:
        listed = history.series_list(args.db or history.default_path())
        print(plain_table(list(listed.columns), listed.values.tolist()))
        return 0
    data, _ = _series(args, None)
    data = data[data["run"].isin(data["run"].drop_duplicates().iloc[-settings.last :])]
    if args.metric not in set(data["metric"]):
        raise history.HistoryError(
            f"history show: expected a metric of this series ({', '.join(sorted(set(data['metric'])))}), "
            f"got {args.metric!r}"
        )
    result = trend.check(data[data["metric"] == args.metric], settings)
    print(out.runs_table(data, args.metric))
    for s in result.series:
        for c in s.changes:
            print(f"{s.name}: {out.change_text(c, s.gating)}")
    if args.plot is not None:
        print(f"plot: {out.plot(result, args.metric, args.plot, data)}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from clusterlab.lab.ci import history_outputs as out
    from clusterlab.lab.ci import trend

    settings = _settings(args)
    current = _record(args.current, args.scenario, args) if args.current else None
    data, newest = _series(args, current)
    result = trend.check(data, settings, newest)
    for path, text in ((args.markdown, out.markdown), (args.json, out.to_json)):
        if path is not None:
            path.write_text(text(result))
    if args.plot_dir is not None:
        args.plot_dir.mkdir(parents=True, exist_ok=True)
        for metric in dict.fromkeys(s.metric for s in result.series if s.gating):
            out.plot(result, metric, args.plot_dir / f"{metric}.png", data)
    print(out.headline(result) if args.quiet else out.terminal(result))
    return result.exit_status


def run(args: argparse.Namespace) -> int:
    """Run ``clusterlab history ACTION``; bad input: one line on stderr, exit 2."""
    handler: dict[str, Any] = {"add": _add, "show": _show, "check": _check}
    try:
        status: int = handler[args.action](args)
    except ValueError as exc:  # HistoryError and CompareInputError are ValueErrors
        print(f"clusterlab: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return status
