"""What the reliability tests share: the short/long switch, the supervised primary/worker
script, a loopback HTTP load that counts every failure by phase, and the workers' in-flight
counters.

`CLUSTERLAB_STRESS=1` selects the long versions (the targets' full figures); the short ones
run in `make test`.
"""

from __future__ import annotations

import http.client
import os
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from conftest import SUPERVISOR_RECORD

STRESS = os.environ.get("CLUSTERLAB_STRESS", "") not in ("", "0")


def pick(short, long):
    """The short figure in `make test`, the long one under CLUSTERLAB_STRESS=1."""
    return long if STRESS else short


# --------------------------------------------------------------------------------------------
# The primary and its workers (run after conftest's PRELUDE)
# --------------------------------------------------------------------------------------------

COMMON = '''
import asyncio, dataclasses, mmap, signal, struct
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit
from clusterlab.supervisor import HeartbeatPolicy, RestartPolicy, Supervisor, heartbeat
from clusterlab.servers import HTTPServer, ThreadingHTTPServer

{SUPERVISOR_RECORD}


class Inflight:
    """Connections this worker holds, in a file-backed page (INFLIGHT_DIR/<pid>): the test
    reads it after the worker died, and it still says what the worker held at its death."""

    def __init__(self):
        path = os.path.join(os.environ["INFLIGHT_DIR"], str(os.getpid()))
        with open(path, "wb") as f:
            f.write(bytes(8))
        fd = os.open(path, os.O_RDWR)
        self._map = mmap.mmap(fd, 8)
        os.close(fd)
        self._lock = threading.Lock()
        self._n = 0

    def add(self, n):
        with self._lock:
            self._n += n
            struct.pack_into("q", self._map, 0, self._n)


def counted(cls, inflight):
    """`cls` counting the connections it holds. The count goes up *before* accept() and down
    after the connection is closed, so it is never below what the process holds."""

    class Counted(cls):
        def get_request(self):
            inflight.add(1)
            try:
                return super().get_request()
            except BaseException:
                inflight.add(-1)
                raise

        def shutdown_request(self, request):
            try:
                super().shutdown_request(request)
            finally:
                inflight.add(-1)

    return Counted


class Handler(BaseHTTPRequestHandler):
    """GET /?ms=N: the headers at once (X-Worker: pid), the body N ms later.
    GET /spin never returns (a stuck handler)."""

    protocol_version = "HTTP/1.0"

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path == "/spin":
            while True:
                pass
        ms = float(parse_qs(url.query).get("ms", ["0"])[0])
        body = f"{os.getpid()}\\n".encode()
        self.send_response(200)
        self.send_header("X-Worker", str(os.getpid()))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if ms:
            time.sleep(ms / 1000)
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def worker_main():
    mode = os.environ.get("MODE", "threads")
    if mode == "boot_fail":
        sys.exit(3)
    inflight = Inflight()
    cls = counted(HTTPServer if mode == "single" else ThreadingHTTPServer, inflight)
    server = cls(("127.0.0.1", int(os.environ["PORT"])), Handler)
    heartbeat(server)
    if mode == "crash_after_boot":
        threading.Timer(0.05, os._exit, (5,)).start()
    server.serve_forever(poll_interval=0.05)


def install(sup):
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, sup.rolling_restart)
    loop.add_signal_handler(signal.SIGUSR1, lambda: sup.stop(float(os.environ.get("GRACE", "5"))))
    loop.add_signal_handler(signal.SIGUSR2, lambda: out("rr", **cluster.round_robin_stats()))


async def amain(sup):
    record(sup)
    install(sup)
    status = await sup.serve()
    out("status", status=status)
    return status
'''
COMMON = COMMON.replace("{SUPERVISOR_RECORD}", SUPERVISOR_RECORD)


def script(config: str, style: str = "asyncio") -> str:
    """A primary script supervising workers; `config` is the Supervisor(...) argument list.

    asyncio: `await sup.serve()`; SIGHUP rolls, SIGUSR1 stops (grace from GRACE), SIGUSR2
    prints the RR counters (record "rr"). run: `sys.exit(sup.run())`, the cluster's own
    SIGINT/SIGTERM shutdown. Workers: MODE threads (threaded HTTP), single (one thread),
    boot_fail (exit 3 before listening), crash_after_boot (exit 5 50 ms after listening).
    """
    if style == "asyncio":
        main = f"sys.exit(asyncio.run(amain(Supervisor({config}))))"
    elif style == "run":
        main = (
            f"sup = Supervisor({config})\nrecord(sup)\nstatus = sup.run()\n"
            "out('status', status=status)\nsys.exit(status)"
        )
    else:
        raise ValueError(style)
    body = (
        "if cluster.is_primary:\n"
        + "\n".join("    " + line for line in main.splitlines())
        + "\nelse:\n    worker_main()\n"
    )
    return COMMON + "\n" + body


def env(port: int, inflight_dir: Path, policy: str = "rr", **extra: str) -> dict[str, str]:
    inflight_dir.mkdir(exist_ok=True)
    return {
        "PORT": str(port),
        "INFLIGHT_DIR": str(inflight_dir),
        "CLUSTERLAB_SCHED_POLICY": policy,
        **extra,
    }


def held_at_death(inflight_dir: Path, pid: int) -> int:
    """What a (dead) worker's in-flight counter said last."""
    return struct.unpack("q", (inflight_dir / str(pid)).read_bytes()[:8])[0]


def live_workers(p) -> dict[int, dict]:
    """Ready workers that have not exited, by pid, from the primary's records."""
    gone = {r["wpid"] for r in p.records("exit")}
    return {r["wpid"]: r for r in p.records("ready") if r["wpid"] not in gone}


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------------------------
# Load: HTTP clients on 127.0.0.1, a new connection per request
# --------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """One request. `phase` is how far it got: connect, send, headers, body, done."""

    start: float
    end: float
    phase: str
    status: int = 0
    worker: int | None = None
    headers_at: float | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.phase == "done" and self.status == 200


class HttpLoad:
    """`clients` threads, each sending GET requests (one connection per request) until
    stopped, `max_requests` reached (per client) or `duration` passed. Every request is one
    `Outcome`; a failure is named by its exception and the phase it reached."""

    def __init__(
        self,
        port: int,
        clients: int,
        path: str | Callable[[int], str] = "/",
        timeout: float = 15.0,
        max_requests: int = 1_000_000,
        duration: float = 600.0,
    ) -> None:
        self.port = port
        self.path = path if callable(path) else (lambda n, _p=path: _p)
        self.timeout = timeout
        self.max_requests = max_requests
        self.duration = duration
        self.results: list[Outcome] = []
        self.stopping = threading.Event()
        self._open: dict[int, Outcome] = {}
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._client, args=(i,), daemon=True, name=f"load-{i}")
            for i in range(clients)
        ]

    def __enter__(self) -> HttpLoad:
        self.started = time.monotonic()
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.stop(check=exc_type is None)  # do not hide the test's own failure

    def stop(self, timeout: float | None = None, check: bool = True) -> None:
        """No new request; wait for those in flight (each ends by its own timeout)."""
        self.stopping.set()
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout + 5)
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        assert not (check and alive), f"load threads still running: {alive}"

    def _client(self, index: int) -> None:
        deadline = time.monotonic() + self.duration
        for n in range(self.max_requests):
            if self.stopping.is_set() or time.monotonic() >= deadline:
                return
            self._one(index, self.path(n))

    def _one(self, index: int, path: str) -> None:
        o = Outcome(start=time.monotonic(), end=0.0, phase="connect")
        with self._lock:
            self._open[index] = o
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            conn.connect()
            o.phase = "send"
            conn.request("GET", path)
            o.phase = "headers"
            resp = conn.getresponse()
            o.headers_at = time.monotonic()
            o.worker = int(resp.getheader("X-Worker", "0")) or None
            o.phase = "body"
            resp.read()  # IncompleteRead when the body is cut short
            o.status = resp.status
            o.phase = "done"
        except Exception as exc:  # noqa: BLE001 - every failure is counted, by type and phase
            o.error = type(exc).__name__
        finally:
            conn.close()
            o.end = time.monotonic()
            with self._lock:
                self._open.pop(index, None)
                self.results.append(o)

    # --- reading ---------------------------------------------------------------------------

    def in_flight(self) -> list[Outcome]:
        with self._lock:
            return list(self._open.values())

    def snapshot(self) -> list[Outcome]:
        with self._lock:
            return list(self.results)

    def count(self) -> int:
        with self._lock:
            return len(self.results)

    def failures(self) -> list[Outcome]:
        return [o for o in self.snapshot() if not o.ok]

    def served_by(self) -> Counter[int]:
        return Counter(o.worker for o in self.snapshot() if o.ok)

    @staticmethod
    def describe(outcomes: list[Outcome]) -> str:
        kinds = Counter(f"{o.error or o.status} at {o.phase}" for o in outcomes)
        return ", ".join(f"{n}× {k}" for k, n in kinds.most_common()) or "none"
