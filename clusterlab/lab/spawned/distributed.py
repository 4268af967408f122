"""The lab's locust master and workers, over locust's own messages: each worker presents the
point's token first (HELLO); the master admits the workers it expects, sends the point's load
(CONFIG), the window's start and stop (MEASURE, STOP), and merges what each worker sends at its
stop (RESULTS). A worker that is gone by then is told apart: its process ended (its loadgen said
so, or it said quit) or it went silent (no heartbeat, nothing else heard).

Runs only inside locust's own processes (imported by the locustfile).
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent
import psutil
from locust.env import Environment
from locust.rpc import Message
from locust.runners import STATE_MISSING, STATE_RUNNING, STATE_SPAWNING, STATE_STOPPING

from clusterlab.lab.protocol import LOAD_TOKEN_ENV, LOADGEN_ENV, LoadFile, LoadMessage

logger = logging.getLogger("clusterlab.lab.load")

#: Seconds a connected worker has to present the token before it is refused.
HELLO_TIMEOUT = 2.0
_POLL = 0.05


def identity() -> dict[str, Any]:
    """This worker as its hello names it: host, pid, and (started by ``clusterlab loadgen``)
    the loadgen, its slot, and the previous worker of that slot it replaces."""
    started_by = json.loads(os.environ.get(LOADGEN_ENV, "{}"))
    return {"host": socket.gethostname(), "pid": os.getpid(), **started_by}


def say_hello(environment: Environment) -> None:
    """A worker's first message: the token and who it is."""
    assert environment.runner is not None
    token = os.environ.get(LOAD_TOKEN_ENV, "")
    environment.runner.send_message(LoadMessage.HELLO, {"token": token, **identity()})


class CpuWindow:
    """A locust process's own CPU and its machine's over the window: the load machine's side
    of the saturation verdicts."""

    def __init__(self) -> None:
        self._start: tuple[float, float, Any] | None = None

    def start(self) -> None:
        self._start = (time.monotonic(), _cpu_seconds(), psutil.cpu_times())

    def figures(self) -> dict[str, Any]:
        """CPU % of one core (this process), % of all CPUs (its machine), over the window."""
        if self._start is None:
            return {}
        began, used, machine = self._start
        elapsed = max(time.monotonic() - began, 1e-6)
        now = psutil.cpu_times()
        busy = sum(now) - now.idle - (sum(machine) - machine.idle)
        total = max(sum(now) - sum(machine), 1e-6)
        return {
            "host": socket.gethostname(),
            "cpu_pct": 100.0 * (_cpu_seconds() - used) / elapsed,
            "machine_cpu_pct": 100.0 * busy / total,
            "cpus": psutil.cpu_count() or 1,
        }


def _cpu_seconds() -> float:
    times = psutil.Process().cpu_times()
    return float(times.user + times.system)


@dataclass
class Master:
    """The master's side: admission, the window's messages, results, and lost workers.

    ``expected`` workers must present ``token`` within ``wait`` seconds, else the master writes
    one line naming what is missing (LoadFile.ERROR) and quits; a worker without the token is
    refused (sent quit, logged); the point starts only with every connected worker admitted.
    """

    environment: Environment
    out: Path
    token: str
    expected: int
    wait: float
    where: str
    absorb: Callable[[dict[str, Any]], None]
    admitted: dict[str, dict[str, Any]] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)
    #: the workers given users at the start, and what became of them
    working: set[str] = field(default_factory=set)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    ended: dict[tuple[str, int], str] = field(default_factory=dict)
    quit_mid_run: set[str] = field(default_factory=set)
    missed: dict[str, float] = field(default_factory=dict)
    _connected: dict[str, float] = field(default_factory=dict)
    _ready: bool = False
    _gave_up: bool = False
    measure_start: float | None = None
    window_over: bool = False

    def __post_init__(self) -> None:
        runner = self.environment.runner
        assert runner is not None
        runner.register_message(LoadMessage.HELLO, self._on_hello)
        runner.register_message(LoadMessage.RESULTS, self._on_results)
        self.environment.events.worker_connect.add_listener(self._on_connect)
        self._start = runner.start
        runner.start = self._gated_start  # type: ignore[method-assign,assignment]
        self._deadline = time.monotonic() + self.wait
        gevent.spawn(self._watch)

    # -- admission -----------------------------------------------------------------------------

    def _on_connect(self, client_id: str, **_: Any) -> None:
        self._connected.setdefault(client_id, time.monotonic())

    def _on_hello(self, environment: Environment, msg: Message, **_: Any) -> None:
        data = dict(msg.data or {})
        given = str(data.pop("token", "") or "")
        if not given or not hmac.compare_digest(given.encode(), self.token.encode()):
            self._refuse(msg.node_id, "a wrong token" if given else "no token")
            return
        self.admitted[msg.node_id] = data
        replaces = data.get("replaces")
        if replaces:  # its loadgen saw the slot's previous worker end
            self.ended[(str(data.get("loadgen")), int(replaces["pid"]))] = str(replaces["how"])

    def _refuse(self, client_id: str, why: str) -> None:
        line = f"refused locust worker {client_id}: it presented {why}"
        logger.warning(line)
        self.refused.append(line)
        runner: Any = self.environment.runner
        node = runner.clients.get(client_id)
        if node is not None:
            del runner.clients[client_id]
            if runner._users_dispatcher is not None:
                runner._users_dispatcher.remove_worker(node)
        runner.server.send_to_client(Message("quit", None, client_id))

    def _present(self) -> list[str]:
        clients = self.environment.runner.clients  # type: ignore[union-attr]
        return [c for c in self.admitted if c in clients]

    def _watch(self) -> None:
        """Refuse the silent, admit the point, and note heartbeats missed in the window."""
        runner: Any = self.environment.runner
        while not self._gave_up:
            now = time.monotonic()
            for client_id in list(runner.clients):
                since = self._connected.setdefault(client_id, now)
                if client_id not in self.admitted and now - since > HELLO_TIMEOUT:
                    self._refuse(client_id, f"no token within {HELLO_TIMEOUT:g} s")
            if not self._ready:
                unadmitted = [c for c in runner.clients if c not in self.admitted]
                if len(self._present()) >= self.expected and not unadmitted:
                    self._ready = True
                elif now > self._deadline:
                    self._give_up()
            for client_id in self.working:
                node = runner.clients.get(client_id)
                if node is None and self.measure_start is not None and not self.window_over:
                    self.quit_mid_run.add(client_id)
                elif node is not None and node.state == STATE_MISSING:
                    self.missed.setdefault(client_id, time.time())
            gevent.sleep(_POLL)

    def _give_up(self) -> None:
        present = self._present()
        names = ", ".join(_name(self.admitted[c]) for c in present) or "none"
        line = (
            f"waited {self.wait:g} s for {self.expected} load workers {self.where}: "
            f"{len(present)} presented the token ({names}), "
            f"{self.expected - len(present)} missing"
        )
        if self.refused:
            line += f"; {len(self.refused)} refused ({self.refused[-1]})"
        (self.out / LoadFile.ERROR).write_text(json.dumps({"error": line}))
        logger.error(line)
        self._gave_up = True
        options = self.environment.parsed_options
        if options is not None:  # locust's own wait for workers (if still on) ends at once
            options.expect_workers_max_wait = 1e-9
        self.environment.runner.quit()  # type: ignore[union-attr]

    def _gated_start(self, user_count: int, spawn_rate: float, **kwargs: Any) -> None:
        """The point starts once every expected worker is admitted; a worker that connects
        later gets no users in it (locust would move running users onto it)."""
        runner: Any = self.environment.runner
        if runner.state in (STATE_RUNNING, STATE_SPAWNING, STATE_STOPPING):
            dispatcher = runner._users_dispatcher
            for node in list(dispatcher._worker_nodes) if dispatcher is not None else []:
                if node.id not in self.working:
                    dispatcher.remove_worker(node)
            return
        while not self._ready and not self._gave_up:
            gevent.sleep(_POLL)
        if self._gave_up:
            return
        self.working = set(self._present())
        self._start(user_count, spawn_rate, **kwargs)

    # -- the window and the results -------------------------------------------------------------

    def send(self, message: LoadMessage, data: Any = None) -> None:
        """``message`` to every worker given users."""
        runner = self.environment.runner
        assert runner is not None
        for client_id in self.working:
            runner.send_message(message, data, client_id=client_id)

    def _on_results(self, environment: Environment, msg: Message, **_: Any) -> None:
        if msg.node_id in self.working and msg.node_id not in self.results:
            self.results[msg.node_id] = msg.data
            self.absorb(msg.data)

    def _gone(self, client_id: str) -> str | None:
        """How a worker that sent no results ended, as far as is known (None: not yet)."""
        info = self.admitted[client_id]
        how = self.ended.get((str(info.get("loadgen")), int(info.get("pid", 0))))
        if how is not None:
            return f"process gone: {how} (its loadgen saw it end)"
        if client_id in self.quit_mid_run:
            return "process gone: it quit mid-window"
        return None

    def collect(self, grace: float) -> None:
        """Wait up to ``grace`` s for every working worker's results, or word of its end."""
        self.window_over = True  # a stopped worker leaves locust's list of clients
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if all(c in self.results or self._gone(c) for c in self.working):
                return
            gevent.sleep(_POLL)

    def lost(self) -> dict[str, str]:
        """The working workers that sent no results, and why."""
        found = {}
        for client_id in sorted(self.working - set(self.results)):
            how = self._gone(client_id)
            if how is None and client_id in self.missed:
                start = self.measure_start or self.missed[client_id]
                how = (
                    f"silent: no heartbeat since +{self.missed[client_id] - start:.1f} s into "
                    "the window and no word of its process (machine or network gone?)"
                )
            found[client_id] = how or "sent no results"
        return found

    def dismiss(self) -> None:
        """Tell every admitted worker to quit (locust's own quit reaches only the workers it
        lists, and a stopped worker leaves that list until it reports ready again)."""
        server: Any = self.environment.runner.server  # type: ignore[union-attr]
        for client_id in self.admitted:
            server.send_to_client(Message("quit", None, client_id))

    def write(self) -> list[str]:
        """LoadFile.WORKERS: every admitted worker, its CPU, and the lost; the lost's lines."""
        lost = self.lost()
        rows = []
        for client_id, info in sorted(self.admitted.items()):
            results = self.results.get(client_id, {})
            rows.append(
                {
                    "worker": client_id,
                    **info,
                    "remote": "loadgen" in info,
                    "working": client_id in self.working,
                    **results.get("cpu", {}),
                    "missed_heartbeat": client_id in self.missed,
                    "lost": lost.get(client_id, ""),
                }
            )
        lines = [f"{_name(self.admitted[c])}: {why}" for c, why in lost.items()]
        data = {"workers": rows, "lost": lines, "refused": self.refused}
        (self.out / LoadFile.WORKERS).write_text(json.dumps(data))
        return lines


def _name(info: dict[str, Any]) -> str:
    where = f"{info.get('host')} pid {info.get('pid')}"
    if "loadgen" in info:
        where += f" (loadgen {info['loadgen']} slot {info.get('slot')})"
    return where
