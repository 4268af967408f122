"""Start and stop benchmark servers: Node.js cluster peers, uvicorn, gunicorn, and clusterlab targets.

A :class:`ServerSpec` says how to launch one server (argv, extra env, port, readiness text, the
path to load). :func:`start` launches it in its own session with output to a log file, waits until
the readiness text has been printed ``ready_count`` times (if given) and ``GET <path>`` answers 200,
and returns a :class:`Server` context manager; :func:`start_all` launches several at once and then
waits for each, so their start-ups overlap, and :func:`stop_all` stops several at once. Ports come from the lab's ``free_port``, and a
server's whole process tree is stopped by pid with the lab's ``stop_tree`` (both in
:mod:`clusterlab.lab.running.processes`: SIGTERM, then SIGKILL after a grace period); every started
server is also stopped at interpreter exit, so exceptions and Ctrl-C leave nothing behind.
:func:`run_json` runs a one-shot benchmark script (its own session, bounded in time, stopped by
pid on any failure) and returns its JSON line.

Peers that are not installed are reported by :func:`peer_specs` as skip notes, never faked.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import importlib.util
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clusterlab.lab.running.processes import free_port, stop_tree

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
NODE_DIR = BENCH / "node"
HOST = "127.0.0.1"
PEERS = ("node-rr", "node-none", "uvicorn", "gunicorn-sync", "gunicorn-gthread")


@dataclass(frozen=True)
class ServerSpec:
    """How to launch one server; ``ready_text`` must appear ``ready_count`` times in its output.
    ``path`` is what the load asks for (and the readiness check, which wants a 200)."""

    name: str
    argv: list[str]
    port: int
    env: dict[str, str] = field(default_factory=dict)
    ready_text: str | None = None
    ready_count: int = 1
    note: str = ""
    path: str = "/"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}{self.path}"

    @property
    def command(self) -> str:
        envs = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return (envs + " " if envs else "") + shlex.join(self.argv)


_live: dict[int, Server] = {}


@atexit.register
def _stop_all() -> None:
    for server in list(_live.values()):
        server.stop()


class Server:
    """A running server; stops its whole process tree on :meth:`stop` or on leaving ``with``."""

    def __init__(self, spec: ServerSpec, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.spec, self.proc, self.log = spec, proc, log
        self.pid = proc.pid
        _live[self.pid] = self

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if _live.pop(self.pid, None) is None:
            return
        stop_tree(self.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=1)
        with contextlib.suppress(OSError):
            self.log.unlink()


def _http_ok(port: int, path: str = "/") -> bool:
    conn = http.client.HTTPConnection(HOST, port, timeout=1)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def start(spec: ServerSpec, timeout: float = 30.0) -> Server:
    """Launch ``spec`` and wait until it is ready; raise RuntimeError (with the log) if it is not."""
    server = _launch(spec)
    _wait_ready(server, time.monotonic() + timeout)
    return server


def start_all(specs: Sequence[ServerSpec], timeout: float = 30.0) -> list[Server]:
    """Launch every spec at once, then wait until each is ready: their start-ups (interpreters,
    imports, workers) overlap instead of queueing. If one is not ready within ``timeout`` (from
    the launch), all are stopped and RuntimeError names it."""
    servers: list[Server] = []
    deadline = time.monotonic() + timeout
    try:
        for spec in specs:
            servers.append(_launch(spec))
        for server in servers:
            _wait_ready(server, deadline)
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers


def stop_all(servers: Sequence[Server]) -> None:
    """Stop every server at once (each on a thread): their shutdowns and grace periods overlap
    instead of queueing."""
    threads = [threading.Thread(target=srv.stop, name=f"stop-{srv.pid}") for srv in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _launch(spec: ServerSpec) -> Server:
    fd, log_name = tempfile.mkstemp(prefix=f"bench-{spec.name}-", suffix=".log")
    with os.fdopen(fd, "wb") as log_file:
        proc = subprocess.Popen(
            spec.argv,
            cwd=ROOT,
            env={**os.environ, **spec.env},
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Server(spec, proc, Path(log_name))


def _wait_ready(server: Server, deadline: float) -> None:
    """Until ``deadline``: the readiness text printed ``ready_count`` times and ``GET path``
    answering 200; else the server is stopped and RuntimeError carries its log's tail."""
    spec, proc = server.spec, server.proc
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{spec.name} exited with {proc.returncode}")
            text = server.log.read_text(errors="replace") if spec.ready_text else ""
            ready = not spec.ready_text or text.count(spec.ready_text) >= spec.ready_count
            if ready and _http_ok(spec.port, spec.path):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{spec.name} not ready within the start-up timeout")
    except BaseException as exc:
        tail = server.log_tail()
        server.stop()
        if isinstance(exc, RuntimeError):
            raise RuntimeError(f"{exc}; command: {spec.command}\n{tail}") from None
        raise


def node_cluster(policy: str, port: int, workers: int = 2) -> ServerSpec:
    """Node.js cluster hello world with NODE_CLUSTER_SCHED_POLICY = ``rr`` or ``none``."""
    return ServerSpec(
        f"node-{policy}",
        ["node", str(NODE_DIR / "hello_cluster.js"), str(workers)],
        port,
        env={"PORT": str(port), "NODE_CLUSTER_SCHED_POLICY": policy},
        ready_text="ready ",
    )


def uvicorn(port: int, workers: int = 2) -> ServerSpec:
    """``uvicorn --workers N`` (uvloop + httptools) serving bench.apps:asgi_app."""
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "bench.apps:asgi_app",
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--log-level",
        "info",
    ]
    return ServerSpec(
        "uvicorn", argv, port, ready_text="Application startup complete", ready_count=workers
    )


def gunicorn(kind: str, port: int, workers: int = 2, threads: int = 8) -> ServerSpec:
    """gunicorn ``sync`` or ``gthread`` (``threads`` per worker) serving bench.apps:wsgi_app."""
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "bench.apps:wsgi_app",
        "-b",
        f"{HOST}:{port}",
        "-w",
        str(workers),
        "-k",
        kind,
        "--log-level",
        "info",
    ]
    if kind == "gthread":
        argv += ["--threads", str(threads)]
    return ServerSpec(
        f"gunicorn-{kind}", argv, port, ready_text="Booting worker", ready_count=workers
    )


def target(
    name: str,
    argv: Sequence[str],
    port: int,
    workers: int = 2,
    env: dict[str, str] | None = None,
    ready_text: str | None = None,
    ready_count: int = 1,
    path: str = "/",
) -> ServerSpec:
    """A clusterlab (or any) server given as argv; ``{port}``, ``{workers}``, ``{python}``,
    ``{root}`` in argv and env values are filled in. Readiness: ``GET path`` answers 200 (and
    ``ready_text`` printed ``ready_count`` times, if given)."""
    fill = {"port": str(port), "workers": str(workers), "python": sys.executable, "root": str(ROOT)}
    return ServerSpec(
        name,
        [a.format(**fill) for a in argv],
        port,
        env={k: v.format(**fill) for k, v in (env or {}).items()},
        ready_text=ready_text,
        ready_count=ready_count,
        path=path,
    )


def run_in_session(
    argv: Sequence[str],
    timeout: float,
    env: dict[str, str] | None = None,
    grace: float = 1.0,
    stderr: int = subprocess.PIPE,
) -> tuple[str, str]:
    """Run ``argv`` from the project root, without stdin, in its own session; return its stdout
    and stderr (empty with ``stderr=subprocess.STDOUT``, which merges it into stdout).

    Bounded by ``timeout``; on a timeout, an exception or Ctrl-C its whole process tree is
    stopped by pid (``grace`` s from SIGTERM to SIGKILL), and a straggler left in its session is
    killed in any case. Raises RuntimeError on a timeout, and on a non-zero exit (with the end of
    its stderr, or of its output when merged)."""
    proc = subprocess.Popen(
        list(argv),
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_tree(proc.pid, grace)
        proc.communicate()
        raise RuntimeError(f"{shlex.join(argv)}: no result after {timeout:.0f} s") from None
    finally:
        if proc.poll() is None:
            stop_tree(proc.pid, grace)
            proc.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # a straggler of its own session, if any
    if proc.returncode != 0:
        raise RuntimeError(_exited(argv, proc.returncode, err or out))
    return out, err or ""


def _exited(argv: Sequence[str], code: int, output: str) -> str:
    tail = "\n".join(output.strip().splitlines()[-10:])
    return f"{shlex.join(argv)} exited with {code}:\n{tail}"


def run_json(
    argv: Sequence[str], timeout: float, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run a benchmark script that prints one JSON line last (e.g. ``bench/ipc.py``,
    ``node bench/node/respawn.js``) in its own session; return that line parsed.

    Bounded by ``timeout``; on a timeout, a failure, an exception or Ctrl-C its whole process
    tree is stopped by pid. Raises RuntimeError (with the end of its stderr) when it fails."""
    out, err = run_in_session(argv, timeout, env)
    lines = out.strip().splitlines()
    if not lines:
        raise RuntimeError(_exited(argv, 0, err))
    try:
        return dict(json.loads(lines[-1]))
    except ValueError:
        raise RuntimeError(
            f"{shlex.join(argv)}: last line is not JSON: {lines[-1][:200]!r}"
        ) from None


def missing(name: str) -> str | None:
    """Why peer ``name`` cannot run here, or None if it can."""
    if name.startswith("node-"):
        return None if shutil.which("node") else "node not on PATH"
    module = name.split("-")[0]
    if importlib.util.find_spec(module) is None:
        return f"{module} not installed in {sys.executable} (pip install {module})"
    if name == "uvicorn" and not all(importlib.util.find_spec(m) for m in ("uvloop", "httptools")):
        return "uvicorn installed without uvloop/httptools"
    return None


def peer_specs(names: Sequence[str], workers: int = 2) -> tuple[list[ServerSpec], list[str]]:
    """Specs for the named peers on free ports, and one skip note per peer that is missing."""
    specs: list[ServerSpec] = []
    notes: list[str] = []
    for name in names:
        why = missing(name)
        if why:
            notes.append(f"{name}: skipped, {why}")
        elif name.startswith("node-"):
            specs.append(node_cluster(name.removeprefix("node-"), free_port(), workers))
        elif name == "uvicorn":
            specs.append(uvicorn(free_port(), workers))
        elif name.startswith("gunicorn-"):
            specs.append(gunicorn(name.removeprefix("gunicorn-"), free_port(), workers))
        else:
            raise ValueError(f"unknown peer {name!r}; known: {', '.join(PEERS)}")
    return specs, notes
