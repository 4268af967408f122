"""The lab's target: a clusterlab primary whose workers serve the built-in endpoints, a user's
ASGI/WSGI app or a user's worker script, and report their request and connection counts.

The workers run under ``clusterlab.supervisor.Supervisor`` (restart policy and heartbeats from
the scenario's ``[respawn]``; never restarted without one); the primary forwards every cluster
and supervisor event, and injects the runner's faults: signals it sends to the worker's pid,
other faults it arms in the worker over the cluster channel, fired by the next request.

Run as ``python -m clusterlab.lab.spawned.target``. With ``--control`` the primary speaks JSON lines with
the runner (commands on stdin, events on stdout); without it, it prints for a human (``serve``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import signal
import sys
import threading
import time
from collections import deque
from typing import Any, TextIO

from clusterlab import cluster, supervisor
from clusterlab.cluster import Address, Worker
from clusterlab.cluster._policies import NAMES as POLICY_NAMES
from clusterlab.lab.protocol import MESSAGE_KEY, Command, Event, WorkerMessage
from clusterlab.supervisor import (
    HeartbeatPolicy,
    RestartLimit,
    RestartPolicy,
    SupervisedWorker,
    Supervisor,
)

REPORT_INTERVAL = 0.1
#: Seconds a stopping target gives its workers to finish before SIGKILL (a SIGSTOPped or hung
#: worker never finishes); shorter than the runner's own patience with the primary.
STOP_GRACE = 3.0
#: "busiest" is the worker that served most requests over this many seconds.
BUSY_WINDOW = 1.0
_KERNEL_POLICIES = ("none", "reuseport")  # the others hand connections over from the primary
_SIGNALS = {"sigkill": signal.SIGKILL, "sigterm": signal.SIGTERM}
#: The slow fault in a worker that is not the built-in endpoints: stopped for 1 - 1/factor of
#: every period (SIGSTOP), running for the rest (SIGCONT).
DUTY_PERIOD = 0.1


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m clusterlab.lab.spawned.target")
    parser.add_argument("--kind", choices=["builtin", "asgi", "wsgi", "script"], default="builtin")
    parser.add_argument("--app", help="module:attribute of the ASGI/WSGI app")
    parser.add_argument("--app-dir", help="directory to import the app from")
    parser.add_argument("--script", help="worker script (kind script)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--policy", type=_policy_name, default="rr")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--control", action="store_true", help="JSON lines on stdin/stdout")
    parser.add_argument(
        "--respawn", type=json.loads, default=None, help="the scenario's [respawn] table as JSON"
    )
    return parser.parse_args(argv)


def _policy_name(value: str) -> str:
    """A built-in policy's name, or a Scheduler as "module:Name" (imported by the primary)."""
    if value in POLICY_NAMES or ":" in value:
        return value
    raise argparse.ArgumentTypeError(f"expected one of {', '.join(POLICY_NAMES)} or module:Name")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if cluster.is_worker:
        if args.control:  # the runner keeps the traceback in the target's log
            _serve_worker(args)
            return 0
        try:
            _serve_worker(args)
        except Exception as exc:  # serve: one line, through the primary, instead of a traceback
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
            _worker().send({MESSAGE_KEY: WorkerMessage.START_FAILED, "error": reason})
            return 1
        return 0
    return asyncio.run(LabTarget(args).run())


# --- worker side -----------------------------------------------------------------------------


def _serve_worker(args: argparse.Namespace) -> None:
    from clusterlab.lab.spawned import endpoints
    from clusterlab.servers import serve_asgi, serve_wsgi

    endpoints.COUNTERS.worker_id = str(_worker().id)
    endpoints.FAULTS.on_fire = _tell_fired
    _start_reporting(endpoints.COUNTERS)
    if args.kind == "wsgi":
        _beat_from_thread()
        serve_wsgi(
            endpoints.counting_wsgi(_import(args.app, args.app_dir)), host=args.host, port=args.port
        )
        return
    app = endpoints.builtin_app if args.kind == "builtin" else _import(args.app, args.app_dir)
    serve_asgi(
        _beating(endpoints.counting_asgi(app)),
        host=args.host,
        port=args.port,
        http=endpoints.CountingHttpToolsProtocol,
        log_level="warning",
        access_log=False,
    )


def _start_reporting(counters: Any) -> None:
    """Send the counts every REPORT_INTERVAL and when asked; take the faults the primary arms."""
    from clusterlab.lab.spawned import endpoints

    lock = threading.Lock()

    def report() -> None:
        with lock:
            _worker().send({MESSAGE_KEY: WorkerMessage.COUNTS, **counters.snapshot()})

    def on_message(message: Any, _handle: Any = None) -> None:
        what = message.get(MESSAGE_KEY) if isinstance(message, dict) else None
        if what == WorkerMessage.REPORT:
            report()
        elif what == WorkerMessage.FAULT and message["kind"] == "exit":
            os._exit(int(message["code"]))
        elif what == WorkerMessage.FAULT and message["kind"] == "slow":
            endpoints.SLOW.start(float(message["factor"]), float(message["length"]))
        elif what == WorkerMessage.FAULT:
            endpoints.FAULTS.arm(message)

    def loop() -> None:
        while _worker().is_connected():
            report()
            time.sleep(REPORT_INTERVAL)

    _worker().on("message", on_message)
    threading.Thread(target=loop, name="lab-counts", daemon=True).start()


def _worker() -> Worker:
    """This worker process's own ``Worker`` (only called in workers)."""
    assert cluster.worker is not None, "only a worker has cluster.worker"
    return cluster.worker


def _tell_fired(fault: dict[str, Any]) -> None:
    message = {k: fault.get(k) for k in ("id", "kind", "fatal")}
    _worker().send({MESSAGE_KEY: WorkerMessage.FAULT_FIRED, "t": time.time(), **message})


def _beating(app: Any) -> Any:
    """Start the supervisor's heartbeats (when it asked for them) on the serving loop itself, at
    the app's first call (uvicorn's lifespan start-up): a handler that blocks the loop stops
    them, so the supervisor sees the hang."""
    started: list[bool] = []

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        if not started and os.environ.get(supervisor.ENV_HEARTBEAT):
            started.append(True)
            supervisor.heartbeat()
        await app(scope, receive, send)

    return wrapped


def _beat_from_thread() -> None:
    """WSGI under waitress gives no hook into its main loop: beat from a thread of the worker.
    A stopped (SIGSTOP) worker falls silent; a stuck handler does not (the scenario refuses
    hang = "handler" for wsgi targets)."""
    if not os.environ.get(supervisor.ENV_HEARTBEAT):
        return
    beat = supervisor.Heartbeat()

    def loop() -> None:
        while _worker().is_connected():
            beat.beat(force=True)
            time.sleep(beat.interval)

    threading.Thread(target=loop, name="lab-heartbeat", daemon=True).start()


def _import(spec: str, app_dir: str | None) -> Any:
    if app_dir:
        sys.path.insert(0, app_dir)
    module, _, attr = spec.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


# --- primary side ----------------------------------------------------------------------------


def policies(respawn: dict[str, Any] | None) -> tuple[RestartPolicy, HeartbeatPolicy | None]:
    """The supervisor's policies for a scenario's ``[respawn]`` table (None: never restart)."""
    if not respawn:
        return RestartPolicy.never(), None
    beat = respawn.get("heartbeat")
    options = {k: v for k, v in respawn.items() if k not in ("policy", "heartbeat")}
    restart = RestartPolicy(mode=respawn["policy"], **options)
    return restart, HeartbeatPolicy(**beat) if beat else None


class LabTarget:
    """The target's primary: supervises the workers, forwards their events and counts, answers the runner's commands
    and injects its faults."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out: TextIO = sys.stdout
        self.port: int | None = None
        self.ready_sent = False
        self.stopping = False
        self.pending: dict[int, dict[int, Any]] = {}
        self.latest: dict[int, Any] = {}
        self.recent: dict[int, deque[tuple[float, float]]] = {}
        self.faulted: dict[int, int] = {}  # worker id → fault id, until it acted or the worker left
        self.duty_cycles: set[asyncio.Task[None]] = set()  # slow faults by SIGSTOP/SIGCONT
        self.start_failed: str | None = None  # serve: the first worker's reason it could not serve
        self.done = asyncio.Event()
        restart, heartbeat = policies(args.respawn)
        # "keep": past the restart limit the survivors go on serving, so the run measures them.
        self.supervisor = Supervisor(
            workers=args.workers,
            restart=restart,
            heartbeat=heartbeat,
            grace=STOP_GRACE,
            on_limit="keep",
        )

    async def run(self) -> int:
        if self.args.control:
            # Keep the real stdout for the protocol; workers inherit stderr as their stdout.
            self.out = os.fdopen(os.dup(1), "w", buffering=1)
            os.dup2(2, 1)
        cluster.scheduling_policy = self.args.policy
        self._setup()
        for name in ("online", "listening", "message"):
            cluster.on(name, getattr(self, f"_on_{name}"))
        for name in (
            "spawn",
            "exit",
            "restart_scheduled",
            "restart_limit",
            "restart_refused",
            "hang_detected",
            "stopped",
        ):
            self.supervisor.on(name, getattr(self, f"_on_supervisor_{name}"))
        self.supervisor.start()
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
        if not self.ready_sent and not self.stopping:  # it never served: a start-up failure
            if not self.args.control:
                why = self.start_failed or "every worker exited before listening"
                print(f"clusterlab serve: cannot start: {why}", file=sys.stderr, flush=True)
            return 1
        return status["code"]

    def _setup(self) -> None:
        if self.args.kind == "script":
            os.environ["CLUSTERLAB_LAB_PORT"] = str(self.args.port)
            cluster.setup_primary(exec=self.args.script, args=[])
        else:
            cluster.setup_primary(exec="-m clusterlab.lab.spawned.target", args=_argv(self.args))

    def emit(self, event: Event, **fields: Any) -> None:
        if self.args.control:
            self.out.write(json.dumps({"event": event, "t": time.time(), **fields}) + "\n")

    def _slot(self, worker_id: int) -> int | None:
        found = [sw.slot for sw in self.supervisor.workers if sw.id == worker_id]
        return found[0] if found else None

    # --- cluster events ------------------------------------------------------------------

    def _on_online(self, worker: Worker) -> None:
        self.emit(Event.ONLINE, worker=worker.id, slot=self._slot(worker.id))

    def _on_listening(self, worker: Worker, address: Address) -> None:
        self.emit(Event.LISTENING, worker=worker.id, port=address.port, slot=self._slot(worker.id))
        self.port = self.port or address.port
        ready = [sw for sw in self.supervisor.workers if sw.ready]
        if self.ready_sent or len(ready) < self.args.workers:
            return
        self.ready_sent = True
        self.emit(Event.READY, port=self.port, workers={sw.id: sw.pid for sw in ready})
        if not self.args.control:
            print(
                f"serving http://{self.args.host}:{self.port}/ with {self.args.workers} "
                f"workers (policy {self.args.policy}); Ctrl-C stops",
                flush=True,
            )

    def _on_message(self, worker: Worker, message: Any, _handle: object = None) -> None:
        what = message.get(MESSAGE_KEY) if isinstance(message, dict) else None
        if what == WorkerMessage.START_FAILED:
            self.start_failed = self.start_failed or str(message.get("error"))
            return
        if what == WorkerMessage.FAULT_FIRED:
            fired = {k: message.get(k) for k in ("t", "id", "kind", "fatal")}
            self.emit(Event.FAULT_FIRED, **self._who(worker), **fired)
            if message.get("kind") == "exception" and not message.get("fatal"):
                self.faulted.pop(worker.id, None)  # it answered 500 and serves on
            return
        if what != WorkerMessage.COUNTS:
            return
        counts = {k: message.get(k) for k in ("requests", "connections")}
        self.emit(Event.COUNTS, worker=worker.id, sent=message.get("t"), **counts)
        self.latest[worker.id] = counts
        self._remember(worker.id, float(message.get("t") or 0.0), float(counts["requests"] or 0))
        for waiting in self.pending.values():
            waiting[worker.id] = counts

    def _who(self, worker: Worker) -> dict[str, Any]:
        return {"worker": worker.id, "pid": worker.process.pid, "slot": self._slot(worker.id)}

    def _remember(self, worker_id: int, t: float, requests: float) -> None:
        recent = self.recent.setdefault(worker_id, deque())
        recent.append((t, requests))
        while recent and recent[0][0] < t - 2 * BUSY_WINDOW:
            recent.popleft()

    def _recent_requests(self, worker_id: int) -> float:
        """Requests the worker served over the last BUSY_WINDOW seconds of its reports."""
        recent = self.recent.get(worker_id)
        if not recent:
            return 0.0
        last_t, last = recent[-1]
        first = next(v for t, v in recent if t >= last_t - BUSY_WINDOW)
        return last - first

    # --- supervisor events ---------------------------------------------------------------

    def _on_supervisor_spawn(self, sw: SupervisedWorker) -> None:
        self.emit(Event.FORK, worker=sw.id, pid=sw.pid, slot=sw.slot)

    def _on_supervisor_exit(
        self, sw: SupervisedWorker, kind: str, code: int | None, sig: str | None
    ) -> None:
        self.faulted.pop(sw.id, None)
        self.recent.pop(sw.id, None)
        self.emit(
            Event.EXIT,
            worker=sw.id,
            pid=sw.pid,
            slot=sw.slot,
            code=code,
            signal=sig,
            kind=kind,
            boot=kind == "boot_failure",
        )

    def _on_supervisor_restart_scheduled(
        self, slot: int, delay: float, attempt: int, kind: str
    ) -> None:
        self.emit(Event.RESTART_SCHEDULED, slot=slot, delay=delay, attempt=attempt, kind=kind)

    def _on_supervisor_restart_limit(self, limit: RestartLimit) -> None:
        self.emit(
            Event.RESTART_LIMIT,
            slot=limit.slot,
            kind=limit.last_exit,
            max_restarts=limit.max_restarts,
            within=limit.within,
            restarts_in_window=limit.restarts_in_window,
            message=limit.message(),
        )

    def _on_supervisor_restart_refused(self, slot: int, kind: str) -> None:
        self.emit(Event.RESTART_REFUSED, slot=slot, kind=kind)

    def _on_supervisor_hang_detected(self, sw: SupervisedWorker, silent: float) -> None:
        self.emit(Event.HANG_DETECTED, worker=sw.id, pid=sw.pid, slot=sw.slot, silent=silent)

    def _on_supervisor_stopped(self, status: int) -> None:
        # Every worker is gone. Before the target was ready (it cannot boot) or when asked to
        # stop, the target ends; mid-run (no restarts) it stays up to answer the runner.
        self.emit(Event.SUPERVISOR_STOPPED, status=status)
        if self.stopping or not self.ready_sent:
            self._finish()

    # --- the runner's commands -----------------------------------------------------------

    async def _read_commands(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            try:
                command = json.loads(line)
            except ValueError:
                self.emit(Event.ERROR, message=f"not a JSON command: {line[:80]!r}")
                continue
            what = command.get("cmd")
            if what == Command.SNAPSHOT:
                await self._snapshot(command.get("id", 0))
            elif what == Command.SUPERVISION:
                self._supervision(command.get("id", 0))
            elif what == Command.FAULT:
                self._inject(command)
            elif what == Command.STOP:
                break
        self._stop()

    async def _snapshot(self, request_id: int) -> None:
        answers: dict[int, Any] = {}
        self.pending[request_id] = answers
        live = [w for w in (cluster.workers or {}).values() if w.is_connected()]
        for worker in live:
            worker.send({MESSAGE_KEY: WorkerMessage.REPORT})
        deadline = time.monotonic() + 2.0
        while len(answers) < len(live) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        del self.pending[request_id]
        self.emit(Event.SNAPSHOT, id=request_id, workers={str(k): v for k, v in answers.items()})

    def _supervision(self, request_id: int) -> None:
        """The round-robin hand-off counters (rr only) and the supervisor's totals."""
        rr = cluster.round_robin_stats() if self.args.policy not in _KERNEL_POLICIES else None
        self.emit(Event.SUPERVISION, id=request_id, rr=rr, stats=dict(self.supervisor.stats))

    def _inject(self, command: dict[str, Any]) -> None:
        """Carry out one fault: a signal to the worker's pid now, or a fault armed in the
        worker (exit at once; exception or handler hang at its next request)."""
        kind = command["kind"]
        fields = {"id": command["id"], "stream": command.get("stream"), "kind": kind}
        sw, reason = self._pick(command)
        if sw is None:
            self.emit(Event.FAULT_SKIPPED, **fields, target=command["target"], reason=reason)
            return
        fields.update(worker=sw.id, pid=sw.pid, slot=sw.slot, target=command["target"])
        if kind == "slow":
            self._slow(sw, command, fields)
            return
        sig = _SIGNALS.get(kind)
        if kind == "hang" and command.get("hang") != "handler":
            sig = signal.SIGSTOP
        self.faulted[sw.id] = command["id"]
        if sig is not None:
            at = time.time()
            try:
                os.kill(sw.pid, sig)
            except ProcessLookupError:
                self.emit(Event.FAULT_SKIPPED, **fields, reason="the worker had just exited")
                return
            self.emit(Event.FAULT, t=at, how=sig.name, **fields)
            return
        options = {k: command.get(k) for k in ("code", "fatal", "hang")}
        sw.worker.send({MESSAGE_KEY: WorkerMessage.FAULT, **fields, **options})
        how = f"exit {options['code']}" if kind == "exit" else "armed"
        self.emit(Event.FAULT, how=how, **fields, **options)

    def _slow(self, sw: SupervisedWorker, command: dict[str, Any], fields: dict[str, Any]) -> None:
        """The slow fault, for ``length`` seconds: the built-in endpoints multiply their cost
        by ``factor`` in that worker; any other worker runs on a SIGSTOP/SIGCONT duty cycle.
        Its end is the ``fault_end`` event."""
        factor, length = float(command["factor"]), float(command["length"])
        fields.update(factor=factor, length=length)
        self.faulted[sw.id] = command["id"]
        loop = asyncio.get_running_loop()
        if self.args.kind == "builtin":
            sw.worker.send({MESSAGE_KEY: WorkerMessage.FAULT, **fields})
            self.emit(Event.FAULT, how="slow", **fields)
            loop.call_later(length, self._slow_over, sw, fields)
            return
        self.emit(Event.FAULT, how="duty cycle", **fields)
        task = loop.create_task(self._duty_cycle(sw, factor, length, fields))
        self.duty_cycles.add(task)
        task.add_done_callback(self.duty_cycles.discard)

    async def _duty_cycle(
        self, sw: SupervisedWorker, factor: float, length: float, fields: dict[str, Any]
    ) -> None:
        stopped = DUTY_PERIOD * (1.0 - 1.0 / factor)
        end = time.monotonic() + length
        try:
            while time.monotonic() < end:
                os.kill(sw.pid, signal.SIGSTOP)
                await asyncio.sleep(stopped)
                os.kill(sw.pid, signal.SIGCONT)
                await asyncio.sleep(DUTY_PERIOD - stopped)
        except ProcessLookupError:
            pass  # the worker exited: its exit is an event of its own
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(sw.pid, signal.SIGCONT)  # never leave it stopped (also when cancelled)
            self._slow_over(sw, fields)

    def _slow_over(self, sw: SupervisedWorker, fields: dict[str, Any]) -> None:
        if self.faulted.get(sw.id) == fields["id"]:
            del self.faulted[sw.id]
        self.emit(Event.FAULT_END, **fields)

    def _pick(self, command: dict[str, Any]) -> tuple[SupervisedWorker | None, str]:
        """The worker a fault goes to, among the ready ones without a pending fault; or why
        there is none."""
        ready = [
            sw
            for sw in self.supervisor.workers
            if sw.ready and sw.alive and sw.id not in self.faulted
        ]
        spec = str(command["target"])
        if not ready:
            return None, "no ready worker without a pending fault"
        if spec == "random":
            return ready[min(int(float(command["draw"]) * len(ready)), len(ready) - 1)], ""
        if spec == "busiest":
            return max(ready, key=lambda sw: (self._recent_requests(sw.id), -sw.slot)), ""
        what, _, number = spec.partition(":")
        found = [sw for sw in ready if (sw.slot if what == "slot" else sw.id) == int(number)]
        if not found:
            return None, f"no ready {what} {number} without a pending fault"
        return found[0], ""

    def _stop(self) -> None:
        self.stopping = True
        for task in list(self.duty_cycles):
            task.cancel()
        if self.supervisor.state == "stopped":
            self._finish()
            return
        self.supervisor.stop(STOP_GRACE)  # its 'stopped' event finishes

    def _finish(self) -> None:
        if not self.done.is_set():
            self.emit(Event.STOPPED)
            self.done.set()

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
    if args.control:
        argv.append("--control")
    if args.app:
        argv += ["--app", args.app, "--app-dir", args.app_dir or "."]
    return argv


if __name__ == "__main__":
    sys.exit(main())
