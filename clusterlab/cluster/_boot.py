"""Worker start-up: become a worker before any user code runs, then run the worker program.

Started by the primary as `python [exec_argv] -c <boot> EXEC [args]`, where EXEC is a script
path or "-m module". Like Node, a worker whose program returns stays up until it is
disconnected; an exception in the program exits 1.
"""

from __future__ import annotations

import asyncio
import os
import runpy
import sys

from . import _child


def main() -> None:
    if sys.path and sys.path[0] != "" and os.path.isdir(os.path.join(sys.path[0], "clusterlab")):
        del sys.path[0]  # the entry the boot line added to find this package
    runtime = _child.start_from_env()
    if runtime is None:
        raise SystemExit("clusterlab: this program is started by cluster.fork(), not by hand")
    cluster = sys.modules.get("clusterlab.cluster")
    if cluster is not None and cluster.is_primary:
        cluster._adopt_runtime(runtime)  # imported by a fork server
    try:
        _run_program(sys.argv[1], sys.argv[2:])
    except (_child.ListenerClosedError, asyncio.CancelledError):
        # A program whose server a graceful disconnect closed (a raw accept() that found its
        # listener closed, asyncio's serve_forever() cancelled) has ended the way Node's would:
        # normally. Any other time these are real errors.
        if not runtime.worker.exited_after_disconnect:
            raise
    # The program returned: stay up until the channel closes (disconnect, or the primary left).
    runtime.program_returned()
    runtime.disconnected.wait()


def _run_program(target: str, args: list[str]) -> None:
    if target.startswith("-m "):
        module = target[3:].strip()
        sys.argv = [module, *args]
        if sys.path and sys.path[0] != "":
            sys.path.insert(0, os.getcwd())
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        sys.argv = [target, *args]
        sys.path[0:1] = [os.path.dirname(os.path.abspath(target))]
        runpy.run_path(target, run_name="__main__")
