"""The lab's target: a clusterlab primary whose workers serve the built-in endpoints, a user's
ASGI/WSGI app or a user's worker script, and report their request and connection counts.

Run as ``python -m clusterlab.lab.target``. With ``--control`` the primary speaks JSON lines with
the runner (commands on stdin, events on stdout); without it, it prints for a human (``serve``).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import signal
import sys
import threading
import time
from typing import Any, TextIO

from clusterlab import cluster as _cluster_module

# The cluster module resolves its members at run time (one object per process, as Node's).
cluster: Any = _cluster_module

MESSAGE_KEY = "clusterlab.lab"
REPORT_INTERVAL = 0.1
_POLICIES = {"rr": "SCHED_RR", "none": "SCHED_NONE", "reuseport": "SCHED_REUSEPORT"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m clusterlab.lab.target")
    parser.add_argument("--kind", choices=["builtin", "asgi", "wsgi", "script"], default="builtin")
    parser.add_argument("--app", help="module:attribute of the ASGI/WSGI app")
    parser.add_argument("--app-dir", help="directory to import the app from")
    parser.add_argument("--script", help="worker script (kind script)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--policy", choices=sorted(_POLICIES), default="rr")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--control", action="store_true", help="JSON lines on stdin/stdout")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if cluster.is_worker:
        _serve_worker(args)
        return 0
    return asyncio.run(_Primary(args).run())


# --- worker side -----------------------------------------------------------------------------


def _serve_worker(args: argparse.Namespace) -> None:
    from clusterlab.lab import endpoints
    from clusterlab.servers import serve_asgi, serve_wsgi

    endpoints.COUNTERS.worker_id = str(cluster.worker.id)
    _start_reporting(endpoints.COUNTERS)
    if args.kind == "wsgi":
        serve_wsgi(
            endpoints.counting_wsgi(_import(args.app, args.app_dir)), host=args.host, port=args.port
        )
        return
    app = endpoints.builtin_app if args.kind == "builtin" else _import(args.app, args.app_dir)
    serve_asgi(
        endpoints.counting_asgi(app),
        host=args.host,
        port=args.port,
        http=endpoints.CountingHttpToolsProtocol,
        log_level="warning",
        access_log=False,
    )


def _start_reporting(counters: Any) -> None:
    lock = threading.Lock()

    def report() -> None:
        with lock:
            cluster.worker.send({MESSAGE_KEY: "counts", **counters.snapshot()})

    def on_message(message: Any, _handle: Any = None) -> None:
        if isinstance(message, dict) and message.get(MESSAGE_KEY) == "report":
            report()

    def loop() -> None:
        while cluster.worker.is_connected():
            report()
            time.sleep(REPORT_INTERVAL)

    cluster.worker.on("message", on_message)
    threading.Thread(target=loop, name="lab-counts", daemon=True).start()


def _import(spec: str, app_dir: str | None) -> Any:
    if app_dir:
        sys.path.insert(0, app_dir)
    module, _, attr = spec.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


# --- primary side ----------------------------------------------------------------------------


class _Primary:
    """Forks the workers, forwards their events and counts, answers the runner's commands."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out: TextIO = sys.stdout
        self.port: int | None = None
        self.listening: set[int] = set()
        self.pending: dict[int, dict[int, Any]] = {}
        self.latest: dict[int, Any] = {}
        self.done = asyncio.Event()

    async def run(self) -> int:
        if self.args.control:
            # Keep the real stdout for the protocol; workers inherit stderr as their stdout.
            self.out = os.fdopen(os.dup(1), "w", buffering=1)
            os.dup2(2, 1)
        cluster.scheduling_policy = getattr(cluster, _POLICIES[self.args.policy])
        self._setup()
        for name in ("fork", "online", "listening", "message", "exit"):
            cluster.on(name, getattr(self, f"_on_{name}"))
        for _ in range(self.args.workers):
            cluster.fork()
        loop = asyncio.get_running_loop()
        status = {"code": 0}

        def on_signal(code: int) -> None:
            # Graceful, as the cluster's own handling: workers finish in-flight requests.
            status["code"] = code
            self._stop()

        loop.add_signal_handler(signal.SIGINT, on_signal, 130)
        loop.add_signal_handler(signal.SIGTERM, on_signal, 143)
        side_job = self._read_commands() if self.args.control else self._print_counts()
        task = loop.create_task(side_job)
        await self.done.wait()
        task.cancel()
        return status["code"]

    def _setup(self) -> None:
        if self.args.kind == "script":
            os.environ["CLUSTERLAB_LAB_PORT"] = str(self.args.port)
            cluster.setup_primary(exec=self.args.script, args=[])
        else:
            cluster.setup_primary(exec="-m clusterlab.lab.target", args=_argv(self.args))

    def emit(self, event: str, **fields: Any) -> None:
        if self.args.control:
            self.out.write(json.dumps({"event": event, "t": time.time(), **fields}) + "\n")

    def _on_fork(self, worker: Any) -> None:
        self.emit("fork", worker=worker.id, pid=worker.process.pid)

    def _on_online(self, worker: Any) -> None:
        self.emit("online", worker=worker.id)

    def _on_listening(self, worker: Any, address: Any) -> None:
        self.emit("listening", worker=worker.id, port=address.port)
        self.port = self.port or address.port
        self.listening.add(worker.id)
        if len(self.listening) == self.args.workers:
            pids = {w.id: w.process.pid for w in cluster.workers.values()}
            self.emit("ready", port=self.port, workers=pids)
            if not self.args.control:
                print(
                    f"serving http://{self.args.host}:{self.port}/ with {self.args.workers} "
                    f"workers (policy {self.args.policy}); Ctrl-C stops",
                    flush=True,
                )

    def _on_message(self, worker: Any, message: Any, _handle: Any = None) -> None:
        if not (isinstance(message, dict) and message.get(MESSAGE_KEY) == "counts"):
            return
        counts = {k: message.get(k) for k in ("requests", "connections")}
        self.emit("counts", worker=worker.id, sent=message.get("t"), **counts)
        self.latest[worker.id] = counts
        for waiting in self.pending.values():
            waiting[worker.id] = counts

    def _on_exit(self, worker: Any, code: Any, signal: Any) -> None:
        self.emit("exit", worker=worker.id, code=code, signal=signal)
        if not cluster.workers:
            self.emit("stopped")
            self.done.set()

    async def _read_commands(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            try:
                command = json.loads(line)
            except ValueError:
                self.emit("error", message=f"not a JSON command: {line[:80]!r}")
                continue
            if command.get("cmd") == "snapshot":
                await self._snapshot(command.get("id", 0))
            elif command.get("cmd") == "stop":
                break
        self._stop()

    async def _snapshot(self, request_id: int) -> None:
        answers: dict[int, Any] = {}
        self.pending[request_id] = answers
        live = [w for w in cluster.workers.values() if w.is_connected()]
        for worker in live:
            worker.send({MESSAGE_KEY: "report"})
        deadline = time.monotonic() + 2.0
        while len(answers) < len(live) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        del self.pending[request_id]
        self.emit("snapshot", id=request_id, workers={str(k): v for k, v in answers.items()})

    def _stop(self) -> None:
        if not cluster.workers:
            self.emit("stopped")
            self.done.set()
            return
        cluster.disconnect()

    async def _print_counts(self) -> None:
        while True:
            await asyncio.sleep(5.0)
            if self.latest:
                print(
                    ", ".join(
                        f"worker {k}: {v['requests']} req / {v['connections']} conn"
                        for k, v in sorted(self.latest.items())
                    ),
                    flush=True,
                )


def _argv(args: argparse.Namespace) -> list[str]:
    argv = ["--kind", args.kind, "--workers", str(args.workers), "--policy", args.policy]
    argv += ["--host", args.host, "--port", str(args.port)]
    if args.app:
        argv += ["--app", args.app, "--app-dir", args.app_dir or "."]
    return argv


if __name__ == "__main__":
    sys.exit(main())
