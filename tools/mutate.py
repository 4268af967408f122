"""Plant named bugs one at a time and check that the tests catch each (``make mutate``).

A test counts only if it fails when the behaviour it names breaks. For every bug in MUTATIONS:

1. copy the working tree (tracked files and untracked ones git does not ignore, as they are now,
   unfinished edits included) into a fresh temporary directory;
2. apply the bug: a textual substitution that must match exactly once. Where code may move, a
   bug names a glob of files and the unique file holding the text is found at run time; where it
   may be rewritten, it lists alternative substitutions, the first that matches is used. When
   none matches, the script stops and says which bug to update: the list stays honest;
3. run the bug's tests from that copy, with the copy first on PYTHONPATH, after checking that
   ``import clusterlab`` resolves inside the copy (tests/conftest.py checks it again in pytest,
   from CLUSTERLAB_MUTANT_ROOT);
4. record which tests failed.

First the same tests run once on an unmutated copy: a test that fails there proves nothing, so
the script stops. At the end a table says, for every bug, the tests that caught it; the exit
status is 1 if any bug survived (or could not be run), 2 if the baseline failed or a bug's text
was not found.

    .venv/bin/python tools/mutate.py                # every bug (3 to 5 minutes on 2 cores)
    .venv/bin/python tools/mutate.py --list         # the bugs and their tests
    .venv/bin/python tools/mutate.py --only grace   # the bugs whose name contains "grace"
    .venv/bin/python tools/mutate.py -v             # and how each one failed
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Seconds one pytest run (one bug's tests) may take before it counts as not caught.
RUN_TIMEOUT = 600


@dataclass(frozen=True)
class Sub:
    """Replace ``old`` by ``new`` in the one file under ``where`` (a path or a glob) holding it."""

    where: str
    old: str
    new: str


@dataclass(frozen=True)
class Mutation:
    name: str
    #: every group is applied; within a group, the first alternative that matches is used
    subs: tuple[tuple[Sub, ...], ...]
    tests: tuple[str, ...]


def one(where: str, old: str, new: str) -> tuple[Sub, ...]:
    return (Sub(where, old, new),)


def wrap(name: str, returns: str) -> str:
    """A replacement for ``def name(`` that makes the function return a constant (the original
    body stays, renamed, so the file still parses whatever its signature)."""
    return f"def {name}(*_args, **_kwargs):\n    return {returns}\n\n\ndef _unmutated_{name}("


PRIMARY = "clusterlab/cluster/_primary.py"
LOOP = "clusterlab/cluster/_loop.py"
RR = "clusterlab/cluster/_round_robin.py"
POLICIES = "clusterlab/cluster/_policies.py"
SUPERVISOR = "clusterlab/supervisor/_supervisor.py"
LAB = "clusterlab/lab/**.py"  # the lab's modules move: found by their text

MUTATIONS: tuple[Mutation, ...] = (
    Mutation(
        "grace ignored (a fixed 10 s)",
        (
            one(
                LOOP,
                'SHUTDOWN_GRACE = float(os.environ.get("CLUSTERLAB_SHUTDOWN_GRACE", "10"))',
                "SHUTDOWN_GRACE = 10.0",
            ),
        ),
        (
            "tests/cluster/test_cluster_primary_loop.py"
            "::test_worker_ignoring_disconnect_is_killed_after_grace_period",
        ),
    ),
    Mutation(
        "RR re-queued connections closed, not handed on",
        (one(RR, "self._queue.extend(untaken)", "[os.close(fd) for fd in untaken]"),),
        (
            "tests/lab/test_lab_faults_run.py::test_round_robin_loses_no_queued_connection",
            "tests/cluster/test_cluster_round_robin.py"
            "::test_rr_worker_death_with_pending_connections_loses_no_client",
        ),
    ),
    Mutation(
        "constant Jain index (1.0)",
        (one(LAB, "def jain_index(", wrap("jain_index", "1.0")),),
        (
            "tests/lab/test_lab_run_end_to_end.py"
            "::test_results_agree_with_the_workers_own_counts_and_the_response_headers",
        ),
    ),
    Mutation(
        "RR hands every connection to one worker",
        (one(RR, "i = (self._next + step) % n", "i = 0"),),
        (
            "tests/cluster/test_cluster_round_robin.py"
            "::test_rr_distribution_is_even_over_four_workers",
        ),
    ),
    Mutation(
        "exited_after_disconnect forced false",
        (
            one(
                PRIMARY,
                "worker.exited_after_disconnect = bool(worker.exited_after_disconnect)\n"
                '        worker.state = "disconnected"',
                'worker.exited_after_disconnect = False\n        worker.state = "disconnected"',
            ),
            one(
                PRIMARY,
                "worker.exited_after_disconnect = bool(worker.exited_after_disconnect)\n"
                '        worker.state = "dead"',
                'worker.exited_after_disconnect = False\n        worker.state = "dead"',
            ),
        ),
        ("tests/cluster/test_cluster_kill_disconnect.py",),
    ),
    Mutation(
        "'exit' without its signal argument",
        (
            one(
                "clusterlab/cluster/_link.py",
                "self.primary.on_exit(self, exit_code, sig_name)",
                "self.primary.on_exit(self, exit_code, None)",
            ),
        ),
        ("tests/cluster/test_cluster_events.py",),
    ),
    Mutation(
        "zero backoff in the supervisor",
        (
            one(
                SUPERVISOR,
                'delay = policy.delay(attempt, self._rng) if policy.mode == "backoff" else 0.0',
                "delay = 0.0",
            ),
        ),
        ("tests/supervisor/test_supervisor_restarts.py::test_restart_delays",),
    ),
    Mutation(
        "compare verdict inverted (judge)",
        (
            (
                # bootstrap-interval judge (since the "inconclusive" verdict)
                Sub(
                    LAB,
                    "worse = (high < 1 / factor) == (direction > 0)",
                    "worse = (high < 1 / factor) != (direction > 0)",
                ),
                # Mann-Whitney judge (before)
                Sub(
                    LAB,
                    "worse = beyond_down if direction > 0 else beyond_up",
                    "worse = not (beyond_down if direction > 0 else beyond_up)",
                ),
            ),
        ),
        ("tests/lab/test_compare_stats.py", "tests/lab/test_compare_cli.py"),
    ),
    Mutation(
        "generator-bound check never fires",
        (
            (
                # the verdict rules (analysis/verdicts.py: judge)
                Sub(LAB, "if u.load_max >= generator_limit:", "if False:"),
                # the older function, wherever it lives
                Sub(LAB, "def generator_bound(", wrap("generator_bound", '(False, "")')),
            ),
        ),
        ("tests/lab/test_analysis_verdicts.py",),
    ),
    Mutation(
        "heartbeat timeout tripled",
        (
            one(
                SUPERVISOR,
                "if silent > self.heartbeat.timeout:",
                "if silent > 3 * self.heartbeat.timeout:",
            ),
        ),
        (
            "tests/supervisor/test_supervisor_lifecycle.py"
            "::test_hung_worker_replaced_within_heartbeat_timeout",
        ),
    ),
    Mutation(
        "fork server preloads none of the program's imports",
        (
            one(
                "clusterlab/cluster/_forkserver.py",
                'preloaded = _preload(spec["preload"])',
                'preloaded = _preload([n for n in spec["preload"] if n.startswith("clusterlab")])',
            ),
        ),
        (
            "tests/cluster/test_cluster_forkserver.py"
            "::test_workers_come_from_one_template_with_the_program_preloaded",
        ),
    ),
    Mutation(
        "inspect port base off by one",
        (
            one(
                "clusterlab/cluster/_settings.py",
                "port = base + offset",
                "port = base + offset - 1",
            ),
        ),
        (
            "tests/cluster/test_cluster_spawn_options.py::test_inspect_port_default_is_base_plus_offset",
        ),
    ),
    Mutation(
        "fault injector does not wait for the measured window",
        (one(LAB, "origin = self._wait_for_window()", "origin = time.time()"),),
        (
            "tests/lab/test_lab_faults_schedule.py"
            "::test_the_injector_waits_for_the_measured_window_then_sends_each_fault_on_time",
        ),
    ),
    Mutation(
        "hash scores by Python's tuple hash of (host, worker id)",
        (
            one(POLICIES, "score = (key * salt) & _MASK64", "score = hash((key, salt & 0xFF))"),
            one(POLICIES, "return _host_key(str(host))", "return hash(str(host))"),
        ),
        (
            "tests/cluster/test_cluster_policies_distribution.py"
            "::test_hash_spreads_many_client_addresses_evenly_over_the_workers",
        ),
    ),
    Mutation(
        "hash-bounded ignores its bound",
        (one(POLICIES, "        if best_load < bound:\n", "        if True:\n"),),
        (
            "tests/cluster/test_cluster_policies_distribution.py"
            "::test_a_busy_clients_connections_stay_on_its_worker_unless_the_load_is_bounded",
        ),
    ),
)


class MutationError(Exception):
    """A bug's text was not found (exactly once): the list must be updated."""


# --- the copy ----------------------------------------------------------------------------------


def tree_files() -> list[str]:
    """Tracked files and untracked ones git does not ignore, that exist now."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return sorted({f for f in out.split("\0") if f and (ROOT / f).is_file()})


def copy_tree(files: list[str], dest: Path) -> None:
    for name in files:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target, follow_symlinks=False)


def _matches(name: str, where: str) -> bool:
    if "*" not in where:
        return name == where
    return fnmatch.fnmatch(name, where)


def apply(mutation: Mutation, files: list[str], dest: Path) -> list[str]:
    """Apply every substitution group of `mutation` in `dest`; the files changed."""
    changed = []
    for group in mutation.subs:
        for sub in group:
            hits = [
                (name, text.count(sub.old))
                for name in files
                if _matches(name, sub.where)
                and name.endswith(".py")
                and sub.old in (text := (dest / name).read_text())
            ]
            if len(hits) == 1 and hits[0][1] == 1:
                path = dest / hits[0][0]
                path.write_text(path.read_text().replace(sub.old, sub.new))
                changed.append(hits[0][0])
                break
        else:
            tried = "; ".join(f"{s.old!r} in {s.where}" for s in group)
            raise MutationError(
                f"{mutation.name}: no substitution matched exactly once ({tried}); "
                "the code moved or changed: update MUTATIONS in tools/mutate.py"
            )
    return changed


# --- running the tests ---------------------------------------------------------------------------


def environment(copy: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONSTARTUP", "PYTHONHOME")}
    env["PYTHONPATH"] = str(copy)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["CLUSTERLAB_MUTANT_ROOT"] = str(copy)
    return env


def check_import(copy: Path) -> None:
    """`import clusterlab` must find the copy, not the working tree (editable install)."""
    found = subprocess.run(
        [sys.executable, "-c", "import clusterlab; print(clusterlab.__file__)"],
        cwd=copy,
        env=environment(copy),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(found).resolve().is_relative_to(copy.resolve()):
        raise SystemExit(f"mutate: clusterlab imported from {found}, not from the copy {copy}")


@dataclass
class Outcome:
    status: str  # passed | failed | error
    failed: list[str]
    seconds: float
    detail: str = ""


def run_tests(copy: Path, tests: tuple[str, ...]) -> Outcome:
    junit = copy / ".mutate-junit.xml"
    argv = [sys.executable, "-m", "pytest", "-q", "--tb=line", "-p", "no:cacheprovider"]
    argv += ["--junitxml", str(junit), "--basetemp", str(copy / ".mutate-tmp"), *tests]
    started = time.monotonic()
    try:
        done = subprocess.run(
            argv,
            cwd=copy,
            env=environment(copy),
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired:
        return Outcome("error", [], time.monotonic() - started, f"over {RUN_TIMEOUT} s")
    seconds = time.monotonic() - started
    failed = _failed_tests(junit)
    lines = (done.stdout + done.stderr).strip().splitlines()
    tail = "\n".join(line[:300] for line in lines if line.startswith(("E ", "/", "FAILED")))
    if done.returncode == 0:
        return Outcome("passed", [], seconds, tail)
    if done.returncode == 1 and failed:
        return Outcome("failed", failed, seconds, tail)
    return Outcome("error", failed, seconds, f"pytest exit {done.returncode}\n{tail}")


def _failed_tests(junit: Path) -> list[str]:
    if not junit.exists():
        return []
    names = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            module = case.get("classname", "").rsplit(".", 1)[-1]
            names.append(f"{module}::{case.get('name')}")
    return names


# --- the whole run -------------------------------------------------------------------------------


def fresh_copy(files: list[str], parent: Path, label: str) -> Path:
    copy = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=parent))
    copy_tree(files, copy)
    check_import(copy)
    return copy


def baseline(files: list[str], parent: Path, mutations: list[Mutation]) -> None:
    tests = tuple(dict.fromkeys(t for m in mutations for t in m.tests))
    copy = fresh_copy(files, parent, "baseline")
    print(f"baseline: {len(tests)} test selections on the unmutated tree ...", flush=True)
    outcome = run_tests(copy, tests)
    shutil.rmtree(copy, ignore_errors=True)
    if outcome.status != "passed":
        print(f"baseline {outcome.status} ({outcome.seconds:.0f} s): {outcome.failed}")
        print(outcome.detail)
        print("mutate: the tests must pass on the unmutated tree before a bug can be judged")
        raise SystemExit(2)
    print(f"baseline passed ({outcome.seconds:.0f} s)", flush=True)


def caught_by(failed: list[str]) -> str:
    """The failed tests, a parametrized test once (with its number of failed cases)."""
    counts: dict[str, int] = {}
    for name in failed:
        base = name.split("[", 1)[0]
        counts[base] = counts.get(base, 0) + 1
    return ", ".join(f"{n} ({k} cases)" if k > 1 else n for n, k in counts.items()) or "-"


def table(rows: list[tuple[str, str, str, str]]) -> str:
    head = ("bug", "where", "result", "caught by")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(3)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(r[:3], widths, strict=False)) + "  " + r[3]
        for r in [head, *rows]
    ]
    lines.insert(1, "-" * min(120, max(len(line) for line in lines)))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="only the bugs whose name contains this text")
    parser.add_argument("--list", action="store_true", help="list the bugs and their tests")
    parser.add_argument("--skip-baseline", action="store_true", help="trust the unmutated tree")
    parser.add_argument("--keep", action="store_true", help="keep the copies (for debugging)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show how each bug failed")
    args = parser.parse_args(argv)
    mutations = [m for m in MUTATIONS if not args.only or args.only in m.name]
    if args.list:
        for m in mutations:
            print(f"{m.name}\n    " + "\n    ".join(m.tests))
        return 0
    if not mutations:
        print(f"mutate: no bug named like {args.only!r}")
        return 2
    files = tree_files()
    parent = Path(tempfile.mkdtemp(prefix="clusterlab-mutate-"))
    started = time.monotonic()
    rows: list[tuple[str, str, str, str]] = []
    try:
        # every bug's text first: a stale entry stops the run before anything long starts
        probe = fresh_copy(files, parent, "probe")
        for m in mutations:
            copy_tree(apply(m, files, probe), probe)  # applied, then undone
        shutil.rmtree(probe, ignore_errors=True)
        if not args.skip_baseline:
            baseline(files, parent, mutations)
        for i, m in enumerate(mutations, 1):
            copy = fresh_copy(files, parent, f"bug{i}")
            where = ", ".join(dict.fromkeys(apply(m, files, copy)))
            print(f"[{i}/{len(mutations)}] {m.name} ({where}) ...", flush=True)
            outcome = run_tests(copy, m.tests)
            result = {"failed": "caught", "passed": "SURVIVED", "error": "ERROR"}[outcome.status]
            print(f"    {result} in {outcome.seconds:.0f} s", flush=True)
            if outcome.status == "error" or args.verbose:
                print("    " + outcome.detail.replace("\n", "\n    "), flush=True)
            rows.append((m.name, where, result, caught_by(outcome.failed)))
            if not args.keep:
                shutil.rmtree(copy, ignore_errors=True)
    except MutationError as exc:
        print(f"mutate: {exc}")
        return 2
    finally:
        if not args.keep:
            shutil.rmtree(parent, ignore_errors=True)
    print()
    print(table(rows))
    survived = [r for r in rows if r[2] != "caught"]
    print(
        f"\n{len(rows) - len(survived)} of {len(rows)} bugs caught in "
        f"{(time.monotonic() - started) / 60:.1f} min"
        + (f"; not caught: {', '.join(r[0] for r in survived)}" if survived else "")
    )
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
