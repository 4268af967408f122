"""Owning the processes a run (or a benchmark) starts: a free loopback port to give one, and
stopping one, or a whole tree of them, by pid with escalating signals, always reaped.

Processes are stopped by pid (never by name); descendants are collected before signalling,
because they are reparented once their parent dies.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import Iterable

import psutil

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on ``host`` that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def stop_process(
    process: subprocess.Popen[bytes],
    grace: float,
    signals: Iterable[signal.Signals | None] = (signal.SIGTERM, signal.SIGKILL),
) -> None:
    """Send each of ``signals`` in turn (None: only wait, for a child already asked to exit),
    waiting up to ``grace`` s after each for the child to exit; it is reaped either way."""
    for sig in signals:
        if process.poll() is not None:
            return
        if sig is not None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def alive_since(pids: Iterable[int], started_after: float) -> list[psutil.Process]:
    """psutil handles for the pids that are still the processes we started (created no earlier
    than ``started_after``, with a second of slack), so a reused pid is never signalled."""
    found = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            if proc.create_time() >= started_after - 1.0:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def stop_all(processes: list[psutil.Process], grace: float = 3.0) -> None:
    """SIGTERM each, wait ``grace`` s, SIGKILL the rest and wait for them."""
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(processes, timeout=grace)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=grace)


def stop_tree(pid: int, grace: float = 3.0) -> None:
    """SIGTERM ``pid``, wait ``grace`` s for it and its descendants, then SIGKILL what is left,
    and last the process group ``pid`` leads (for a child started in its own session)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        procs = []
    if procs:
        with contextlib.suppress(psutil.Error):
            procs[0].send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            procs.extend(c for c in proc.children(recursive=True) if c not in procs)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    psutil.wait_procs(procs, timeout=grace)
