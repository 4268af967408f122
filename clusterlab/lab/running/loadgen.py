"""``clusterlab loadgen``: on a load machine, for a whole run, keep locust workers connected to
the lab's master, each with the lab's own locustfile and the shared token. A worker ends with
each point (its master tells it to quit) and is started again for the next; one that ended
otherwise (killed, crashed) is named to the master by its successor's hello, so the point it
left is marked "process gone", not merely "silent".
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TextIO

from clusterlab.lab.protocol import LOAD_TOKEN_ENV, LOADGEN_ENV
from clusterlab.lab.running.load import locustfile
from clusterlab.lab.running.processes import stop_process

#: Seconds between a worker's end and its successor's start.
RESTART_S = 0.5


class LoadgenError(ValueError):
    """Bad arguments: the one line to show."""


def parse_master(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (LoadgenError otherwise)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise LoadgenError(f"--master expects HOST:PORT (e.g. 198.18.0.1:5557), got {address!r}")
    return host, int(port)


def read_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise LoadgenError(f"--token-file: cannot read {path}: {exc.strerror or exc}") from None
    if not token:
        raise LoadgenError(f"--token-file: {path} is empty")
    return token


def how_it_ended(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


@dataclass
class Loadgen:
    """``processes`` slots, each holding one locust worker at a time."""

    host: str
    port: int
    token: str
    processes: int
    log: TextIO
    name: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    slots: list[subprocess.Popen[bytes] | None] = field(default_factory=list)
    _stopping: bool = False

    def run(self) -> int:
        """Until SIGTERM or SIGINT: start each slot's worker, again when it ends."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        self.slots = [None] * self.processes
        print(
            f"loadgen {self.name}: {self.processes} locust worker(s) for the master at "
            f"{self.host}:{self.port}",
            file=self.log,
            flush=True,
        )
        try:
            while not self._stopping:
                for slot, worker in enumerate(self.slots):
                    if worker is None or worker.poll() is not None:
                        self._start(slot, worker)
                time.sleep(RESTART_S)
        finally:
            for worker in self.slots:
                if worker is not None:
                    stop_process(worker, grace=3.0)
        return 0

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def _start(self, slot: int, previous: subprocess.Popen[bytes] | None) -> None:
        started_by: dict[str, object] = {"loadgen": self.name, "slot": slot}
        if previous is not None and previous.returncode != 0:
            how = how_it_ended(previous.returncode)
            started_by["replaces"] = {"pid": previous.pid, "how": how}
            print(f"loadgen: slot {slot}: worker {previous.pid} {how}", file=self.log, flush=True)
        env = {**os.environ, LOAD_TOKEN_ENV: self.token, LOADGEN_ENV: json.dumps(started_by)}
        self.slots[slot] = subprocess.Popen(
            [sys.executable, "-m", "locust", "-f", str(locustfile()), "--worker"]
            + ["--master-host", self.host, "--master-port", str(self.port)]
            + ["--loglevel", "WARNING", "--exit-code-on-error", "0"],
            stdin=subprocess.DEVNULL,
            env={**env, "PYTHONUNBUFFERED": "1"},
        )
