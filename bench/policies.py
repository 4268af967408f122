"""The scheduler rows of `make bench`: each built-in scheduler's hand-off rate against `rr` (in
the hand-off rows' run when those run too, else a run of their own; short samples), and the server of the tree before schedulers existed (a `git worktree` of
that commit), a peer in the `rr` row's run.

Every server is `bench/clusterlab_hello.py` (2 workers, uvicorn), loaded by wrk with a new
connection per request, so every request is a scheduling decision.
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bench import peers, sources
from bench.handoff import target_from_template

#: The built-in schedulers measured against rr (Node's round robin, inline).
SCHEDULERS = ("least-conn", "p2c", "jiq", "hash", "hash-bounded", "weighted", "random")
#: What a row's figure means beyond the hand-off rate, by whether wrk connected from many
#: addresses (bench/sources.py) or from its one.
NOTES = {
    ("hash", True): f"wrk connects from {sources.COUNT} loopback addresses in turn (every server "
    "of the paired phase alike): hash spreads them over the workers",
    ("hash", False): "no C compiler for bench/sources.c: wrk's one client address (127.0.0.1) "
    "sticks to one worker, which serves everything",
    ("hash-bounded", True): f"wrk connects from {sources.COUNT} loopback addresses in turn: "
    "sticky while a worker carries under 1.25 x the mean load",
    ("hash-bounded", False): "no C compiler for bench/sources.c: wrk's one client address; "
    "its worker keeps it until it carries 1.25 x the mean load",
}


def note(name: str, many_sources: bool) -> str:
    """The row's note for scheduler ``name`` ("" when there is nothing to add)."""
    return NOTES.get((name, many_sources), "")


#: The file whose first commit brought schedulers: the commit before it is rr's baseline.
_FIRST_OF_SCHEDULERS = "clusterlab/cluster/_scheduler.py"
_HELLO = "{python} bench/clusterlab_hello.py --workers {workers} --port {port} --policy "
_BASE_HELLO = (
    "env PYTHONPATH={tree} {python} {tree}/bench/clusterlab_hello.py --workers {workers} "
    "--port {port} --policy rr"
)
_READY = " listening on "


def baseline_commit() -> str:
    """The last commit before schedulers (ValueError when history does not reach it)."""
    out = _git("log", "--diff-filter=A", "--format=%H", "--", _FIRST_OF_SCHEDULERS)
    first = out.split()[-1] if out.split() else ""
    if not first:
        raise ValueError(f"no commit adds {_FIRST_OF_SCHEDULERS} (a shallow clone?)")
    return _git("rev-parse", "--short", f"{first}^").strip()


@contextlib.contextmanager
def worktree(rev: str) -> Iterator[Path]:
    """A detached `git worktree` of `rev` in a temporary directory, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="clusterlab-base-") as tmp:
        path = Path(tmp) / "tree"
        _git("worktree", "add", "--detach", "--quiet", str(path), rev)
        try:
            yield path
        finally:
            _git("worktree", "remove", "--force", str(path))


def scheduler_specs(workers: int, with_rr: bool = True) -> list[peers.ServerSpec]:
    """rr (unless ``with_rr`` is false: the caller measures it already) and every built-in
    scheduler on this tree."""
    return [
        target_from_template(f"clusterlab-{name}", _HELLO + name, workers, _READY)
        for name in (("rr",) if with_rr else ()) + SCHEDULERS
    ]


def base_spec(workers: int, tree: Path) -> peers.ServerSpec:
    """rr on the old `tree` (its own package first on the path; its workers follow it)."""
    template = _BASE_HELLO.replace("{tree}", str(tree))
    return target_from_template("clusterlab-rr-base", template, workers, _READY)


def _git(*args: str) -> str:
    res = subprocess.run(
        ["git", *args], cwd=peers.ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    if res.returncode != 0:
        raise ValueError(f"git {' '.join(args)}: {res.stderr.strip()[-300:]}")
    return res.stdout
