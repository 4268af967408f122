"""The hot-path rows' old tree: the commit before issue 15's refactor of the cluster (the primary
split into channel, link, spawners and acts; `cluster.settings` a dataclass; the supervisor on
the primary's loop), a `git worktree` of it measured beside today's tree in the same run.

Its peers: RR and SCHED_NONE hand-off (`bench/clusterlab_hello.py` of that tree, each measured
between two samples of today's same server), IPC (`bench/ipc.py` of that tree) and respawn
(`bench/respawn.py` of that tree, per start method), each alternated with today's run by run.
Every one runs the old tree's own script with the old tree's package first on the path (its
workers follow the package: the boot line puts its root on theirs).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import peers
from bench.handoff import target_from_template

#: The last commit before issue 15's refactor (`--refactor-base`; "" leaves these peers out).
REFACTOR_BASE = "dc97950"
_HELLO = (
    "env PYTHONPATH={tree} {python} {tree}/bench/clusterlab_hello.py --workers {workers} "
    "--port {port} --policy "
)
_READY = " listening on "


def name(policy: str) -> str:
    """The hand-off server of the old tree for ``policy`` (``clusterlab-rr-refactor-base``)."""
    return f"clusterlab-{policy}-refactor-base"


def hello_spec(workers: int, tree: Path, policy: str) -> peers.ServerSpec:
    """``policy``'s hello server on the old `tree`."""
    template = _HELLO.replace("{tree}", str(tree)) + policy
    return target_from_template(name(policy), template, workers, _READY)


def script_job(
    tree: Path, script: str, args: list[str], timeout: float, env: dict[str, str] | None = None
) -> Callable[[], dict[str, Any]]:
    """A function that runs the old tree's ``bench/<script>`` (one JSON line) and returns it."""

    def run() -> dict[str, Any]:
        argv = [sys.executable, str(tree / "bench" / script), *args]
        return peers.run_json(argv, timeout, {**(env or {}), "PYTHONPATH": str(tree)})

    return run
