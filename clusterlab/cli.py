"""The ``clusterlab`` command: run a scenario, rebuild a report, serve the built-in target, list
scenarios, show machine facts, compare runs, keep and calibrate baselines. Exit status 0 success,
1 a run or command failed (compare: a regression), 2 bad input, 3 inconclusive (compare: a gated
metric could not be judged; calibrate: untrusted points, nothing saved)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clusterlab.lab.config.scenario import Scenario
    from clusterlab.lab.running.runner import RunOutcome

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INCONCLUSIVE = 0, 1, 2, 3
MAX_SERVE_WORKERS = 256  # the lab's limit on a point's workers, for serve too


DESCRIPTION = (
    "Node.js's cluster module in Python, and a lab that measures clusters of workers: run a "
    "scenario, rebuild a report, serve the built-in target, list scenarios, show machine "
    "facts, compare runs, keep and calibrate baselines."
)
EPILOG = (
    "exit status: 0 success; 1 a run or command failed (compare: a regression); 2 bad input "
    "(nothing written); 3 inconclusive (compare: a gated metric could not be judged; "
    "calibrate: untrusted points, nothing saved). COMMAND --help describes each command."
)


class _HelpFormatter(argparse.HelpFormatter):
    """An option's default after its help, unless it has none or the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        shown = default is not None and default is not False and default != []
        said = "default" in text
        if action.option_strings and shown and default is not argparse.SUPPRESS and not said:
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("clusterlab")
    except PackageNotFoundError:  # running from a source tree that is not installed
        from clusterlab import __version__

        return __version__


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="clusterlab", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(
        dest="command", required=True, parser_class=_Parser, metavar="COMMAND"
    )
    run = sub.add_parser("run", help="run a scenario and write its report")
    run.add_argument("scenario", help="scenario file, or the name of a bundled scenario")
    run.add_argument(
        "--out",
        type=Path,
        help="report directory, which must not exist (default: the scenario's report.out, "
        "else reports/NAME-TIMESTAMP)",
    )
    run.add_argument("-q", "--quiet", action="store_true", help="no progress, no summary table")
    run.add_argument(
        "--cpu-split",
        choices=["auto", "on", "off"],
        help="separate CPUs for load and target (default: the scenario's cpus.split, auto: "
        "split from 4 usable CPUs)",
    )
    report = sub.add_parser(
        "report", help="rebuild plots, summary.json and reports from a run's tables"
    )
    report.add_argument("directory", type=Path, help="a run's directory (with meta.json)")
    _serve_parser(sub)
    scenarios = sub.add_parser(
        "scenarios",
        help="list the bundled scenarios, or validate scenario files (invalid ones on stderr, "
        "exit 2)",
    )
    scenarios.add_argument(
        "files", nargs="*", type=Path, help="scenario files (default: the bundled ones)"
    )
    sub.add_parser("info", help="machine facts as the lab records them")
    _ci_parsers(sub)
    _history_parser(sub)
    _plan_parser(sub)
    _loadgen_parser(sub)
    _describe_commands(parser)
    return parser


def _loadgen_parser(sub: argparse._SubParsersAction) -> None:
    """`clusterlab loadgen`: the lab's locust workers on a load machine, for a whole run."""
    loadgen = sub.add_parser(
        "loadgen",
        help="on a load machine: keep locust workers connected to a lab run's master (the "
        "scenario's [remote]) for the whole run",
    )
    loadgen.add_argument(
        "--master", required=True, metavar="HOST:PORT", help="the master's remote.bind"
    )
    loadgen.add_argument(
        "--token-file",
        required=True,
        type=Path,
        metavar="FILE",
        help="the shared token (the scenario's remote.token_file)",
    )
    loadgen.add_argument(
        "--processes", type=int, default=1, help="locust workers to keep (one core each)"
    )


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    """`clusterlab serve`: the built-in target, and its metrics when asked."""
    serve = sub.add_parser(
        "serve",
        help="serve the built-in target for curl or wrk (/hello, /cpu?ms=N, /io?ms=N, "
        "/mixed?cpu=N&io=N; each response names its worker in X-Worker-Id); Ctrl-C stops",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=None,
        help=f"worker processes, 1 to {MAX_SERVE_WORKERS} (default: available_parallelism())",
    )
    serve.add_argument(
        "--policy",
        default="rr",
        help="scheduling policy: rr, none, reuseport, or a built-in scheduler (least-conn, p2c, "
        "jiq, hash, hash-bounded, weighted, random; docs/policies.md)",
    )
    serve.add_argument("--port", type=int, default=8000, help="port, 0 to 65535 (0: any free)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="also serve Prometheus metrics at http://HOST:PORT/metrics (docs/metrics.md)",
    )


def _describe_commands(parser: argparse.ArgumentParser) -> None:
    """Each command's --help starts with what it does: its line in the list of commands."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                command = action.choices[choice.dest]
                command.description = command.description or choice.help
                _describe_commands(command)


def _ci_parsers(sub: argparse._SubParsersAction) -> None:
    """compare, baseline and calibrate."""
    compare = sub.add_parser(
        "compare",
        help="compare two runs: exit 0 unchanged, 1 regression, 3 inconclusive (2 bad input)",
    )
    compare.add_argument("baseline", help="run directory, summary.json or saved baseline name")
    compare.add_argument("current", help="run directory or summary.json")
    compare.add_argument(
        "--threshold",
        action="append",
        default=[],
        metavar="[METRIC=]PCT",
        help="change that counts, in %% (default: the baseline's calibrated thresholds, else "
        "10); METRIC=PCT overrides one metric, PCT the default",
    )
    compare.add_argument(
        "--alpha",
        type=float,
        default=0.05,
        help="the interval is 100 × (1 − alpha) %% (default 0.05: 95 %%)",
    )
    compare.add_argument(
        "--max-other-cpu",
        type=float,
        default=25.0,
        metavar="PCT",
        help="a point with more outside CPU (%% of a core) is untrusted (default 25)",
    )
    for flag, what in (("--markdown", "the Markdown table"), ("--junit", "JUnit XML")):
        compare.add_argument(flag, type=Path, help=f"write {what} here")
    compare.add_argument("--json", type=Path, help="write JSON here")
    compare.add_argument("-q", "--quiet", action="store_true", help="only the headline")
    baseline = sub.add_parser("baseline", help="save or show a named baseline")
    bsub = baseline.add_subparsers(
        dest="action", required=True, parser_class=_Parser, metavar="ACTION"
    )
    save = bsub.add_parser("save", help="keep a run as baseline NAME")
    save.add_argument("name", help="the baseline's name (letters, digits, '_', '.', '-')")
    save.add_argument("directory", type=Path, help="the run's directory")
    show = bsub.add_parser("show", help="describe baseline NAME")
    show.add_argument("name", help="the baseline's name")
    _calibrate_parser(sub)


def _history_parser(sub: argparse._SubParsersAction) -> None:
    from clusterlab.lab.ci import history_command

    history_command.add_parser(sub)


def _plan_parser(sub: argparse._SubParsersAction) -> None:
    from clusterlab.lab import plan_command

    plan_command.add_parser(sub)


def _plan(args: argparse.Namespace) -> int:
    from clusterlab.lab import plan_command

    return plan_command.run(args)


def _calibrate_parser(sub: argparse._SubParsersAction) -> None:
    calibrate = sub.add_parser(
        "calibrate",
        help="run a scenario's A/A pairs, measure each metric's noise, save baseline NAME "
        "with per-metric thresholds",
    )
    calibrate.add_argument("scenario", nargs="?", help="scenario file or bundled name")
    calibrate.add_argument("--name", required=True, help="baseline name to save")
    calibrate.add_argument("--pairs", type=int, default=2, help="A/A pairs to run (default 2)")
    calibrate.add_argument("--k", type=float, default=2.0, help="threshold = max(floor, k × noise)")
    calibrate.add_argument(
        "--floor", type=float, default=5.0, metavar="PCT", help="the smallest threshold, in %%"
    )
    calibrate.add_argument("--out", type=Path, help="folder for the runs (must not exist)")
    calibrate.add_argument(
        "--from",
        dest="runs",
        nargs="+",
        type=Path,
        metavar="RUN",
        help="calibrate from recorded runs A A' [A A' ...] instead of running the scenario",
    )
    calibrate.add_argument(
        "--max-other-cpu",
        type=float,
        default=25.0,
        metavar="PCT",
        help="a point with more outside CPU (%% of a core) is untrusted",
    )
    calibrate.add_argument("-q", "--quiet", action="store_true", help="no progress")


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
        "calibrate": _calibrate,
        "history": _history,
        "plan": _plan,
        "loadgen": _loadgen,
    }[args.command]
    return handler(args)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _run_input(args: argparse.Namespace) -> tuple[Scenario, Path] | None:
    """The scenario and the output folder of ``clusterlab run``, or None (said why) for bad
    input. Only the scenario's own modules are imported here: bad input is refused before
    pandas, matplotlib and locust are loaded (≈ 2 s)."""
    from clusterlab.lab.config.plan import default_out_dir
    from clusterlab.lab.config.scenario import ScenarioError, load_scenario, resolve_scenario
    from clusterlab.lab.running.cpus import CpuSplitError, plan_cpus, usable_cpus

    try:
        scenario = load_scenario(resolve_scenario(args.scenario))
    except ScenarioError as exc:
        print(f"clusterlab: {exc}", file=sys.stderr)
        return None
    out = args.out or (
        Path(scenario.report.out) if scenario.report.out else default_out_dir(scenario)
    )
    if out.exists():
        print(
            f"clusterlab: --out: expected a directory that does not exist yet, got {out}",
            file=sys.stderr,
        )
        return None
    if args.cpu_split:
        scenario = replace(scenario, cpus=replace(scenario.cpus, split=args.cpu_split))
    try:
        plan_cpus(scenario.cpus, usable_cpus())
    except CpuSplitError as exc:
        print(f"clusterlab: {scenario.path}: {exc}", file=sys.stderr)
        return None
    return scenario, out


def _run(args: argparse.Namespace) -> int:
    checked = _run_input(args)
    if checked is None:
        return EXIT_BAD_INPUT
    scenario, out = checked
    from clusterlab.lab.ci.outputs import gates_terminal
    from clusterlab.lab.output import policies as lab_policies
    from clusterlab.lab.output.report_tables import summary_table
    from clusterlab.lab.output.text import markdown_table
    from clusterlab.lab.pipeline import run_lab
    from clusterlab.lab.running.progress import ConsoleProgress
    from clusterlab.lab.running.wrk import choose_engine

    _, why = choose_engine(scenario)
    if why and not args.quiet:
        print(why, file=sys.stderr)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    progress = ConsoleProgress(
        quiet=args.quiet, generator_bound_cpu=scenario.load.generator_bound_cpu
    )
    lab = run_lab(scenario, out, progress)
    table = summary_table(lab.analysis.aggregates)
    if not args.quiet and not table.empty:
        print(markdown_table(table))
    if lab.analysis.capacity is not None and not lab.analysis.measured.empty:
        print(lab.analysis.capacity.recommendation.text())
    for line in lab_policies.closing_lines(lab.analysis):
        print(line)
    state = "PARTIAL (interrupted) " if lab.outcome.interrupted else ""
    report = lab.report
    print(f"{state}report: {report} (and {report.with_suffix('.html').name}, plots, CSVs in {out})")
    failed_gates = not lab.gates_passed
    if lab.gate_results and (not args.quiet or failed_gates):
        print(gates_terminal(lab.gate_results), file=sys.stderr if failed_gates else sys.stdout)
    if lab.outcome.failed:
        print(_failures_text(lab.outcome), file=sys.stderr)
    if lab.outcome.interrupted or lab.outcome.failed or failed_gates:
        return EXIT_FAILED
    return EXIT_OK


def _failures_text(outcome: RunOutcome) -> str:
    """How many points failed and why, each reason once with the points it took (printed even
    with -q: the reason is what the user needs)."""
    lines = [f"clusterlab: {outcome.failed} of {outcome.points} points failed:"]
    for numbers, error in outcome.failures:
        which = "point " if len(numbers) == 1 else "points "
        lines.append(f"  {which}{', '.join(map(str, numbers))}: {error}")
    return "\n".join(lines)


def _compare_inputs(args: argparse.Namespace) -> tuple[list[dict], dict, str]:
    """The two summaries, the baseline's calibrated thresholds and where they came from;
    ValueError (CompareInputError) for bad input."""
    from clusterlab.lab.ci import baseline
    from clusterlab.lab.ci.compare import load_summary

    if not 0 < args.alpha < 1 or not args.max_other_cpu >= 0:
        raise ValueError(
            f"--alpha/--max-other-cpu: expected alpha in (0, 1) and a percentage ≥ 0, got "
            f"{args.alpha} and {args.max_other_cpu}"
        )
    paths = [baseline.resolve(args.baseline), baseline.resolve(args.current)]
    summaries = [load_summary(p) for p in paths]
    thresholds, where = baseline.calibrated(paths[0])
    return summaries, thresholds, where


def _compare(args: argparse.Namespace) -> int:
    from clusterlab.lab.ci import outputs as ci_output
    from clusterlab.lab.ci.compare import DEFAULT_THRESHOLD, compare, parse_thresholds

    try:
        default, thresholds = parse_thresholds(args.threshold)
        summaries, calibrated, calibration = _compare_inputs(args)
    except ValueError as exc:
        print(f"clusterlab: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    result = compare(
        summaries[0],
        summaries[1],
        thresholds,
        DEFAULT_THRESHOLD if default is None else default,
        args.alpha,
        (args.baseline, args.current),
        calibrated=calibrated,
        max_other_cpu=args.max_other_cpu,
        calibration=calibration,
    )
    for path, text in (
        (args.markdown, ci_output.markdown(result)),
        (args.junit, ci_output.junit(result)),
        (args.json, ci_output.to_json(result)),
    ):
        if path is not None:
            path.write_text(text)
    print(ci_output.headline(result) if args.quiet else ci_output.terminal(result))
    return result.exit_status


def _calibration_runs(args: argparse.Namespace) -> tuple[list[Path], bool]:
    """The A/A runs to calibrate from: recorded (--from) or run now; (dirs, all complete)."""
    from clusterlab.lab.ci.calibrate import run_pairs
    from clusterlab.lab.config.plan import default_out_dir
    from clusterlab.lab.config.scenario import load_scenario, resolve_scenario
    from clusterlab.lab.running.progress import ConsoleProgress
    from clusterlab.lab.running.wrk import choose_engine

    if args.runs:
        if args.scenario:
            raise ValueError("calibrate: expected a SCENARIO or --from RUN..., got both")
        return list(args.runs), True
    if not args.scenario or args.pairs < 1:
        raise ValueError(
            f"calibrate: expected a SCENARIO (or --from RUN...) and --pairs ≥ 1, "
            f"got {args.scenario!r} and {args.pairs}"
        )
    scenario = load_scenario(resolve_scenario(args.scenario))
    out = args.out or default_out_dir(scenario).with_name(
        f"calibrate-{default_out_dir(scenario).name}"
    )
    if out.exists():
        raise ValueError(f"--out: expected a directory that does not exist yet, got {out}")
    _, why = choose_engine(scenario)
    if why and not args.quiet:
        print(why, file=sys.stderr)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    progress = ConsoleProgress(
        sys.stderr, quiet=args.quiet, generator_bound_cpu=scenario.load.generator_bound_cpu
    )
    return run_pairs(scenario, out, args.pairs, progress)


def _calibrate(args: argparse.Namespace) -> int:
    from clusterlab.lab.ci import baseline, calibrate
    from clusterlab.lab.ci.compare import load_summary
    from clusterlab.lab.output.text import plain_table

    try:
        if not (args.k > 0 and 0 <= args.floor < 1000):
            raise ValueError(f"calibrate: expected --k > 0 and --floor ≥ 0, got {args.k}")
        baseline.check_name(args.name)  # before minutes of runs
        runs, complete = _calibration_runs(args)
        summaries = [load_summary(r) for r in runs]
        result = calibrate.calibrate_from(
            summaries,
            [str(r) for r in runs],
            args.k,
            args.floor / 100,
            max_other_cpu=args.max_other_cpu,
        )
    except ValueError as exc:  # ScenarioError and CompareInputError too
        print(f"clusterlab: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(
        plain_table(
            ["metric", "group", "A/A intervals", "noise", "threshold"], calibrate.table(result)
        )
    )
    for line in result.data["not_calibrated"]:
        print(f"not calibrated (default threshold): {line}")
    if not complete or not result.ok:
        for line in result.refused:
            print(f"refused: {line}", file=sys.stderr)
        print(
            f"calibrate: {'a run failed' if not complete else 'INCONCLUSIVE'}: nothing saved "
            f"(runs in {Path(runs[0]).parent})",
            file=sys.stderr,
        )
        return EXIT_FAILED if not complete else EXIT_INCONCLUSIVE
    try:
        folder = baseline.save(args.name, runs[0], result.data)
    except ValueError as exc:
        print(f"clusterlab: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"baseline {args.name} saved in {folder} with {calibrate.FILE} (from {runs[0]})")
    return EXIT_OK


def _baseline(args: argparse.Namespace) -> int:
    from clusterlab.lab.ci import baseline
    from clusterlab.lab.ci.compare import CompareInputError

    try:
        if args.action == "save":
            folder = baseline.save(args.name, args.directory)
            kept = (folder / "thresholds.json").is_file()
            print(
                f"baseline {args.name} saved in {folder}"
                + (" (calibrated thresholds kept: same scenario and machine)" if kept else "")
            )
        else:
            print(baseline.show(args.name))
    except CompareInputError as exc:
        print(f"clusterlab: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK


def _history(args: argparse.Namespace) -> int:
    from clusterlab.lab.ci import history_command

    return history_command.run(args)


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


def _loadgen(args: argparse.Namespace) -> int:
    from clusterlab.lab.running.loadgen import Loadgen, LoadgenError, parse_master, read_token

    try:
        host, port = parse_master(args.master)
        token = read_token(args.token_file)
        if not 1 <= args.processes <= MAX_SERVE_WORKERS:
            raise LoadgenError(
                f"--processes expects 1 to {MAX_SERVE_WORKERS}, got {args.processes}"
            )
    except LoadgenError as exc:
        print(f"clusterlab: loadgen: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return Loadgen(host, port, token, args.processes, sys.stderr).run()


def _serve(args: argparse.Namespace) -> int:
    from clusterlab import available_parallelism
    from clusterlab.cluster._policies import NAMES as POLICY_NAMES
    from clusterlab.lab.spawned import target

    if args.policy not in POLICY_NAMES:
        print(
            f"clusterlab: serve: --policy must be one of {', '.join(POLICY_NAMES)}, "
            f"got {args.policy!r}",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    workers = available_parallelism() if args.workers is None else args.workers
    if not 1 <= workers <= MAX_SERVE_WORKERS or not 0 <= args.port <= 65535:
        print(
            f"clusterlab: serve: expected --workers from 1 to {MAX_SERVE_WORKERS} and --port "
            f"from 0 to 65535, got {workers} and {args.port}",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    if args.metrics is not None:
        status = _serve_metrics(args.metrics)
        if status != EXIT_OK:
            return status
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


def _serve_metrics(address: str) -> int:
    """Start the primary's /metrics endpoint before any worker: a bad address or a failed
    bind is one line."""
    from clusterlab import cluster

    primary = cluster._primary
    assert primary is not None  # the command's process is the primary
    try:
        primary.serve_metrics(address)
    except ValueError:
        print(
            f"clusterlab: serve: --metrics expects HOST:PORT (e.g. 127.0.0.1:9464), "
            f"got {address!r}",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    except OSError as exc:
        print(f"clusterlab: serve: --metrics: {exc.strerror or exc}", file=sys.stderr)
        return 1
    assert primary.metrics is not None
    print(f"metrics on {primary.metrics.url}", flush=True)
    return EXIT_OK


def _scenarios(args: argparse.Namespace) -> int:
    from clusterlab.lab.config.scenario import ScenarioError, bundled_scenarios, load_scenario

    files = args.files or sorted(bundled_scenarios().values())
    status = EXIT_OK
    for path in files:
        try:
            scenario = load_scenario(path)
        except ScenarioError as exc:
            print(f"invalid  {exc}", file=sys.stderr)
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
