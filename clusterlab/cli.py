"""The ``clusterlab`` command: run a scenario, rebuild a report, serve the built-in target, list
scenarios, show machine facts. Exit status 0 success, 1 a run or command failed, 2 bad input."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from types import FrameType

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="clusterlab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="run a scenario and write its report")
    run.add_argument("scenario", help="scenario file, or the name of a bundled scenario")
    run.add_argument("--out", type=Path, help="report directory (must not exist)")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress, no summary table")
    report = sub.add_parser(
        "report", help="rebuild plots, summary.json and reports from a run's tables"
    )
    report.add_argument("directory", type=Path)
    serve = sub.add_parser("serve", help="serve the built-in target for curl/wrk")
    serve.add_argument("--workers", type=int, default=None, help="default: available_parallelism()")
    serve.add_argument("--policy", choices=["rr", "none", "reuseport"], default="rr")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--host", default="127.0.0.1")
    scenarios = sub.add_parser("scenarios", help="list bundled scenarios, or validate files")
    scenarios.add_argument("files", nargs="*", type=Path)
    sub.add_parser("info", help="machine facts as the lab records them")
    compare = sub.add_parser(
        "compare", help="compare two runs: exit 1 on a significant regression beyond threshold"
    )
    compare.add_argument("baseline", help="run directory, summary.json or saved baseline name")
    compare.add_argument("current", help="run directory or summary.json")
    compare.add_argument(
        "--threshold",
        action="append",
        default=[],
        metavar="[METRIC=]PCT",
        help="change that counts, in %% (default 10); METRIC=PCT overrides one metric",
    )
    compare.add_argument("--alpha", type=float, default=0.01, help="significance level (0.01)")
    compare.add_argument("--markdown", type=Path, help="write the Markdown table here")
    compare.add_argument("--junit", type=Path, help="write JUnit XML here")
    compare.add_argument("--json", type=Path, help="write JSON here")
    compare.add_argument("-q", "--quiet", action="store_true", help="only the headline")
    baseline = sub.add_parser("baseline", help="save or show a named baseline")
    bsub = baseline.add_subparsers(dest="action", required=True, parser_class=_Parser)
    save = bsub.add_parser("save", help="keep a run as baseline NAME")
    save.add_argument("name")
    save.add_argument("directory", type=Path)
    show = bsub.add_parser("show", help="describe baseline NAME")
    show.add_argument("name")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = {
        "run": _run,
        "report": _report,
        "serve": _serve,
        "scenarios": _scenarios,
        "info": _info,
        "compare": _compare,
        "baseline": _baseline,
    }[args.command]
    return handler(args)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _run(args: argparse.Namespace) -> int:
    from clusterlab.lab.ci.outputs import gates_terminal
    from clusterlab.lab.config.scenario import ScenarioError, load_scenario, resolve_scenario
    from clusterlab.lab.output.report_tables import summary_table
    from clusterlab.lab.output.text import markdown_table
    from clusterlab.lab.pipeline import run_lab
    from clusterlab.lab.running.progress import ConsoleProgress
    from clusterlab.lab.running.runner import default_out_dir

    try:
        scenario = load_scenario(resolve_scenario(args.scenario))
    except ScenarioError as exc:
        print(f"clusterlab: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    out = args.out or (
        Path(scenario.report.out) if scenario.report.out else default_out_dir(scenario)
    )
    if out.exists():
        print(
            f"clusterlab: --out: expected a directory that does not exist yet, got {out}",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    signal.signal(signal.SIGTERM, _raise_interrupt)
    progress = ConsoleProgress(
        quiet=args.quiet, generator_bound_cpu=scenario.load.generator_bound_cpu
    )
    lab = run_lab(scenario, out, progress)
    table = summary_table(lab.analysis.aggregates)
    if not args.quiet and not table.empty:
        print(markdown_table(table))
    state = "PARTIAL (interrupted) " if lab.outcome.interrupted else ""
    report = lab.report
    print(f"{state}report: {report} (and {report.with_suffix('.html').name}, plots, CSVs in {out})")
    failed_gates = not lab.gates_passed
    if lab.gate_results and (not args.quiet or failed_gates):
        print(gates_terminal(lab.gate_results), file=sys.stderr if failed_gates else sys.stdout)
    if lab.outcome.failed:
        print(
            f"clusterlab: {lab.outcome.failed} of {lab.outcome.points} points failed",
            file=sys.stderr,
        )
    if lab.outcome.interrupted or lab.outcome.failed or failed_gates:
        return EXIT_FAILED
    return EXIT_OK


def _compare(args: argparse.Namespace) -> int:
    from clusterlab.lab.ci import baseline
    from clusterlab.lab.ci import outputs as ci_output
    from clusterlab.lab.ci.compare import (
        COMPARED,
        DERIVED,
        CompareInputError,
        compare,
        load_summary,
    )

    thresholds: dict[str, float] = {}
    default = 0.10
    try:
        for text in args.threshold:
            metric, _, pct = text.rpartition("=")
            value = float(pct.rstrip("%")) / 100
            if not 0 <= value < 10 or (metric and metric not in {*COMPARED, *DERIVED}):
                raise ValueError(text)
            if metric:
                thresholds[metric] = value
            else:
                default = value
        if not 0 < args.alpha < 1:
            raise ValueError(f"--alpha {args.alpha}")
        paths = []
        for given in (args.baseline, args.current):
            saved = None if Path(given).exists() else baseline.find(given)
            paths.append(saved or Path(given))
        summaries = [load_summary(p) for p in paths]
    except ValueError as exc:
        if not isinstance(exc, CompareInputError):
            exc = ValueError(
                f"--threshold/--alpha: expected [METRIC=]PERCENT with METRIC one of "
                f"{', '.join([*COMPARED, *DERIVED])} and alpha in (0, 1), got {exc}"
            )
        print(f"clusterlab: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    result = compare(
        summaries[0],
        summaries[1],
        thresholds,
        default,
        args.alpha,
        (args.baseline, args.current),
    )
    for path, text in (
        (args.markdown, ci_output.markdown(result)),
        (args.junit, ci_output.junit(result)),
        (args.json, ci_output.to_json(result)),
    ):
        if path is not None:
            path.write_text(text)
    print(ci_output.headline(result) if args.quiet else ci_output.terminal(result))
    return EXIT_FAILED if result.regressions else EXIT_OK


def _baseline(args: argparse.Namespace) -> int:
    from clusterlab.lab.ci import baseline
    from clusterlab.lab.ci.compare import CompareInputError

    try:
        if args.action == "save":
            folder = baseline.save(args.name, args.directory)
            print(f"baseline {args.name} saved in {folder}")
        else:
            print(baseline.show(args.name))
    except CompareInputError as exc:
        print(f"clusterlab: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK


def _report(args: argparse.Namespace) -> int:
    from clusterlab.lab.output.report import build_report

    if not (args.directory / "meta.json").is_file():
        print(
            f"clusterlab: {args.directory}: expected a lab run directory (with meta.json), "
            "got none",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    print(f"report: {build_report(args.directory)}")
    return EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    from clusterlab import available_parallelism
    from clusterlab.lab.spawned import target

    workers = args.workers or available_parallelism()
    if workers < 1 or not 0 <= args.port <= 65535:
        print(
            "clusterlab: serve: expected --workers ≥ 1 and --port in 0..65535, "
            f"got {workers} and {args.port}",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    return target.main(
        [
            "--workers",
            str(workers),
            "--policy",
            args.policy,
            "--port",
            str(args.port),
            "--host",
            args.host,
        ]
    )


def _scenarios(args: argparse.Namespace) -> int:
    from clusterlab.lab.config.scenario import ScenarioError, bundled_scenarios, load_scenario

    files = args.files or sorted(bundled_scenarios().values())
    status = EXIT_OK
    for path in files:
        try:
            scenario = load_scenario(path)
        except ScenarioError as exc:
            print(f"invalid  {exc}")
            status = EXIT_BAD_INPUT
            continue
        print(f"ok       {scenario.name:<10} {path}  {scenario.description}")
    return status


def _info(args: argparse.Namespace) -> int:
    from clusterlab.lab.running.machine import machine_facts

    print(json.dumps(machine_facts(), indent=2))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
