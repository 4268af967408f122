"""The runner's handles on a target: start it, wait until it listens, take per-worker count
snapshots, list its processes, and stop it with everything it started.

``ClusterTarget`` drives ``python -m clusterlab.lab.spawned.target --control`` over JSON lines (count
snapshots, supervision counters, fault injection); ``CommandTarget`` runs an external server;
``UrlTarget`` only points at one that is already running.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from clusterlab.lab.config.scenario import LOOPBACK_HOSTS, Respawn, Target, url_host
from clusterlab.lab.protocol import CLOSED, Command, Event, FaultCommand, Supervision
from clusterlab.lab.running.cpus import pinned
from clusterlab.lab.running.processes import alive_since, free_port, stop_all, stop_process


class TargetError(RuntimeError):
    """The target did not start, did not listen in time, or broke its protocol."""


#: How many of the target's last lines of output a start-up failure quotes.
LOG_TAIL_LINES = 8


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """``; see PATH``, and the file's last non-blank lines (indented) when it has any: what a
    target printed before it failed, for the one message the user reads."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        text = ""
    last = [line.rstrip() for line in text.splitlines() if line.strip()][-lines:]
    quoted = "".join(f"\n    {line}" for line in last)
    return f"; see {path}" + (f"; its last lines:{quoted}" if quoted else "")


@dataclass
class TargetConfig:
    """What to start for one group of points."""

    target: Target
    workers: int
    policy: str
    log_path: Path
    respawn: Respawn | None = None
    #: A fixed port (0: the cluster picks one). With faults, the port must outlive every
    #: worker: if all die at once, their replacements listen on the same port again.
    port: int = 0
    #: The CPUs the target (and everything it starts) is pinned to; None: not pinned.
    cpus: tuple[int, ...] | None = None


@dataclass
class _Stream:
    events: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    answers: queue.Queue[dict[str, Any]] = field(default_factory=queue.Queue)


class ClusterTarget:
    """A clusterlab primary started by the lab, controlled over its stdin/stdout."""

    def __init__(self, config: TargetConfig) -> None:
        self.config = config
        self.url = ""
        self._stream = _Stream()
        self._next_id = 0
        self._send_lock = threading.Lock()  # the fault injector sends from its own thread
        self._log = open(config.log_path, "ab")  # noqa: SIM115 - closed in stop()
        command = [sys.executable, "-m", "clusterlab.lab.spawned.target", "--control"]
        command += ["--kind", config.target.kind, "--workers", str(config.workers)]
        command += ["--policy", config.policy]
        if config.target.app:
            command += ["--app", config.target.app, "--app-dir", config.target.app_dir or "."]
        if config.target.script:
            command += ["--script", config.target.script]
        if config.respawn is not None:
            command += ["--respawn", json.dumps(asdict(config.respawn))]
        if config.port:
            command += ["--port", str(config.port)]
        self.process = subprocess.Popen(
            pinned(command, config.cpus),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            start_new_session=True,
            env={
                **os.environ,
                "PYTHONUNBUFFERED": "1",
                "CLUSTERLAB_START_METHOD": config.target.start_method,
            },
        )
        self._reader = threading.Thread(target=self._read, name="target-events", daemon=True)
        self._reader.start()

    @property
    def primary_pid(self) -> int | None:
        return self.process.pid

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            with self._stream.lock:
                self._stream.events.append(event)
            if event.get("event") in (
                Event.SNAPSHOT,
                Event.SUPERVISION,
                Event.READY,
                Event.STOPPED,
                Event.SUPERVISOR_STOPPED,
            ):
                self._stream.answers.put(event)
        self._stream.answers.put({"event": CLOSED})

    def events(self) -> list[dict[str, Any]]:
        with self._stream.lock:
            return list(self._stream.events)

    def wait_ready(self) -> None:
        """Until every worker listens. Ends at once, with the target's last lines of output,
        when the primary exits or its workers are all gone before that (a target that cannot
        boot: a missing module, a port in use, a crashing app)."""
        deadline = time.monotonic() + self.config.target.ready_timeout
        while time.monotonic() < deadline:
            try:
                answer = self._stream.answers.get(timeout=0.2)
            except queue.Empty:
                if self.process.poll() is None:
                    continue
                break
            if answer["event"] == Event.READY:
                self.url = f"http://127.0.0.1:{answer['port']}"
                return
            if answer["event"] in (CLOSED, Event.STOPPED, Event.SUPERVISOR_STOPPED):
                break
        else:
            raise TargetError(
                f"target did not get {self.config.workers} workers listening within "
                f"{self.config.target.ready_timeout:g} s{log_tail(self.config.log_path)}"
            )
        status = self.process.poll()
        who = "its workers exited" if status is None else f"it exited with status {status}"
        raise TargetError(
            f"target did not start: {who} before {self.config.workers} worker(s) listened"
            f"{log_tail(self.config.log_path)}"
        )

    def worker_pids(self) -> dict[str, int]:
        """Workers forked so far that have not exited."""
        pids: dict[str, int] = {}
        for event in self.events():
            if event["event"] == Event.FORK:
                pids[str(event["worker"])] = event["pid"]
            elif event["event"] == Event.EXIT:
                pids.pop(str(event["worker"]), None)
        return pids

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Every live worker's cumulative counts, asked for now (answers within ~2 s); none for
        a user's worker script, which is counted from its response header instead."""
        if self.config.target.kind == "script":
            return {}
        answer = self._ask(Command.SNAPSHOT, "a count snapshot")
        return {k: {**v, "t": answer["t"]} for k, v in answer["workers"].items()}

    def supervision(self) -> Supervision:
        """``rr``: the primary's round-robin hand-off counters (None unless policy rr);
        ``stats``: the supervisor's totals (spawns, restarts, exits by kind, refused)."""
        answer = self._ask(Command.SUPERVISION, "its supervision counters")
        return Supervision(rr=answer.get("rr"), stats=answer.get("stats"))

    def inject(self, command: FaultCommand) -> None:
        """Send a fault command; the primary reports what it did as a 'fault' event."""
        self._send(command)

    def _ask(self, what: Command, described: str) -> dict[str, Any]:
        self._next_id += 1
        self._send({"cmd": what, "id": self._next_id})
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            try:
                answer = self._stream.answers.get(timeout=0.2)
            except queue.Empty:
                continue
            if answer["event"] == what and answer.get("id") == self._next_id:
                return answer
            if answer["event"] in (CLOSED, Event.STOPPED):
                break
        raise TargetError(f"target did not answer {described}; see {self.config.log_path}")

    def _send(self, command: dict[str, Any] | FaultCommand) -> None:
        assert self.process.stdin is not None
        try:
            with self._send_lock:
                self.process.stdin.write((json.dumps(command) + "\n").encode())
                self.process.stdin.flush()
        except (BrokenPipeError, ValueError) as exc:
            raise TargetError(f"target control channel closed; see {self.config.log_path}") from exc

    def stop(self) -> None:
        """Ask the primary to disconnect its workers; escalate to signals; reap every worker."""
        workers = alive_since(self.worker_pids().values(), self._started_after())
        with contextlib.suppress(TargetError):  # already gone: the escalation below still runs
            self._send({"cmd": Command.STOP})
        if self.process.stdin is not None:
            self.process.stdin.close()
        stop_process(self.process, grace=5.0, signals=(None, signal.SIGTERM, signal.SIGKILL))
        stop_all(workers)
        self._reader.join(timeout=2.0)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log.close()

    def _started_after(self) -> float:
        try:
            return psutil.Process(self.process.pid).create_time()
        except psutil.Error:
            return time.time()


class CommandTarget:
    """An external server command started by the lab on a free loopback port."""

    def __init__(self, config: TargetConfig) -> None:
        self.config = config
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self._port = port
        values = {"port": str(port), "workers": str(config.workers), "policy": config.policy}
        command = [part.format(**values) for part in config.target.command]
        self._log = open(config.log_path, "ab")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "CLUSTERLAB_SCHED_POLICY": config.policy}
        self.process = subprocess.Popen(
            pinned(command, config.cpus),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            start_new_session=True,
            env=env,
        )
        self._started = time.time()

    @property
    def primary_pid(self) -> int | None:
        return self.process.pid

    def events(self) -> list[dict[str, Any]]:
        return []

    def wait_ready(self) -> None:
        """Until the command's output has ``ready_line`` once per worker (or ``ready_count``
        times); without one, until its port accepts a connection."""
        target = self.config.target
        if target.ready_line is None:
            _wait_listening(self._port, target.ready_timeout, self.process, self.config)
            return
        count = target.ready_count or max(1, self.config.workers)
        _wait_for_lines(self.config, re.compile(target.ready_line), count, self.process)

    def worker_pids(self) -> dict[str, int]:
        """The command's descendants, keyed by pid (its workers if it forks any)."""
        return _descendants(self.process.pid)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return {}

    def supervision(self) -> Supervision:
        return Supervision(rr=None, stats=None)

    def stop(self) -> None:
        descendants = alive_since(self.worker_pids().values(), self._started - 1.0)
        stop_process(self.process, grace=5.0)
        stop_all(descendants)
        self._log.close()


class UrlTarget:
    """A server the user runs; the lab only loads it."""

    def __init__(self, config: TargetConfig) -> None:
        self.config = config
        self.url = (config.target.url or "").rstrip("/")
        self.primary_pid: int | None = _given_pid(config)

    def events(self) -> list[dict[str, Any]]:
        return []

    def wait_ready(self) -> None:
        port = int(self.url.rsplit(":", 1)[1]) if self.url.count(":") == 2 else 80
        host = url_host(self.url)
        _wait_listening(port, self.config.target.ready_timeout, None, self.config, host)

    def worker_pids(self) -> dict[str, int]:
        """The given server process's descendants (none when no pid was given)."""
        return _descendants(self.primary_pid) if self.primary_pid is not None else {}

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per-worker counts from ``target.metrics`` when given (else none: the header's)."""
        return self._scrape().workers if self.config.target.metrics else {}

    def supervision(self) -> Supervision:
        rr = self._scrape().handoff if self.config.target.metrics else None
        return Supervision(rr=rr, stats=None)

    def _scrape(self) -> Any:
        from clusterlab.lab.running.metrics_scrape import scrape

        return scrape(self.config.target.metrics or "")

    def reports_cpu(self) -> bool:
        """Its CPU comes from its metrics endpoint: psutil has no process of it to sample."""
        return bool(self.config.target.metrics) and self.primary_pid is None

    def elsewhere(self) -> bool:
        """Its metrics endpoint, so its processes, are on another host (not this machine's)."""
        metrics = self.config.target.metrics or ""
        return bool(metrics) and url_host(metrics).strip("[]") not in LOOPBACK_HOSTS

    def reported_cpu(self) -> dict[tuple[str, str], float]:
        """The primary's and each worker's CPU seconds as its endpoint reports them (none when
        it does not answer: the sampler's next try may)."""
        try:
            return dict(self._scrape().cpu_s)
        except TargetError:
            return {}

    def host_cpus(self) -> int | None:
        """The CPUs its primary may use on its host, when it is elsewhere and says so."""
        return self._scrape().host_cpus if self.elsewhere() and self.reports_cpu() else None

    def stop(self) -> None:
        return None


def _given_pid(config: TargetConfig) -> int | None:
    """A url target's process, from target.pid or target.pidfile (TargetError when the file
    does not hold the pid of a running process)."""
    target = config.target
    if target.pidfile is None:
        return target.pid
    try:
        pid = int(Path(target.pidfile).read_text().split()[0])
        psutil.Process(pid)
    except (OSError, ValueError, IndexError, psutil.Error) as exc:
        raise TargetError(
            f"target.pidfile {target.pidfile}: expected the pid of a running process ({exc})"
        ) from None
    return pid


def _descendants(pid: int) -> dict[str, int]:
    """Every descendant of ``pid``, keyed by its pid as a string."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return {}
    return {str(c.pid): c.pid for c in children}


TargetHandle = ClusterTarget | CommandTarget | UrlTarget


def start_target(config: TargetConfig) -> TargetHandle:
    """Start (or attach to) the target and wait until it listens; stopped again on failure."""
    kinds: dict[str, type[TargetHandle]] = {"command": CommandTarget, "url": UrlTarget}
    handle = kinds.get(config.target.kind, ClusterTarget)(config)
    try:
        handle.wait_ready()
    except BaseException:
        handle.stop()
        raise
    return handle


def _wait_for_lines(
    config: TargetConfig, pattern: re.Pattern[str], count: int, process: subprocess.Popen[bytes]
) -> None:
    """Until ``pattern`` has matched ``count`` lines of the command's log."""
    deadline = time.monotonic() + config.target.ready_timeout
    found = 0
    while time.monotonic() < deadline:
        text = config.log_path.read_text(errors="replace") if config.log_path.exists() else ""
        found = sum(1 for line in text.splitlines() if pattern.search(line))
        if found >= count:
            return
        if process.poll() is not None:
            raise TargetError(
                f"target command exited with status {process.returncode} before it was ready"
                f"{log_tail(config.log_path)}"
            )
        time.sleep(0.05)
    raise TargetError(
        f"target command printed {found} of {count} lines matching ready_line "
        f"{pattern.pattern!r} within {config.target.ready_timeout:g} s; see {config.log_path}"
    )


def _wait_listening(
    port: int,
    timeout: float,
    process: subprocess.Popen[bytes] | None,
    config: TargetConfig,
    host: str = "127.0.0.1",
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise TargetError(
                f"target command exited with status {process.returncode}{log_tail(config.log_path)}"
            )
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TargetError(f"nothing listened on {host}:{port} within {timeout:g} s")
