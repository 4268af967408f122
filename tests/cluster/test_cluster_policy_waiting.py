"""A connection waiting for its own worker (hash: sticky by client address; that worker's window
is full) waits alone: the primary goes on serving the other workers' clients; the waiting ones
are served by their worker when it takes again, or by another when it dies, none lost; and at
most CLUSTERLAB_RR_WAITING of them wait before the primary stops accepting."""

import os
import signal
import socket
import threading
import time

import pytest
from test_cluster_policies_distribution import SIMPLE, pid_of, read_line, stop

pytestmark = pytest.mark.timeout(40)

WINDOW = 4  # the default hand-off window

PRIMARY = """
        import signal
        if cluster.is_primary:
            cluster.setup_primary(scheduler="hash")
            cluster.on("listening", lambda w, a: out("listening", id=w.id, port=a.port,
                                                      wpid=w.process.pid))
            cluster.on("exit", lambda w, c, s: out("exit", id=w.id))
            cluster.fork()
            cluster.fork()
            cluster._primary.loop.add_signal_handler(
                signal.SIGUSR2, lambda: out("stats", rr=cluster.round_robin_stats(),
                                            workers=cluster._primary.handles.worker_stats()))
        else:
"""


def start(start_primary, env=None):
    """A hash primary with 2 SIMPLE workers; its port, the worker pids and, per worker id, a
    client address that hash sends to it."""
    p = start_primary(PRIMARY + SIMPLE, env=env)
    listening = p.wait_for("listening", count=2, timeout=20)
    pids = {rec["id"]: rec["wpid"] for rec in listening}
    port = listening[0]["port"]
    home: dict[int, str] = {}
    for i in range(2, 60):
        source = f"127.0.0.{i}"
        wid = next(w for w, pid in pids.items() if pid == pid_of(port, source))
        home.setdefault(wid, source)
        if len(home) == 2:
            return p, port, pids, home
    raise AssertionError(f"58 addresses all went to one worker: {home}")


def stats(p) -> tuple[dict, dict[int, dict]]:
    """The primary's hand-off counters and per-worker counters, now."""
    before = len(p.records("stats"))
    p.send_signal(signal.SIGUSR2)
    rec = p.wait_for("stats", count=before + 1, timeout=10)[-1]
    return rec["rr"], {int(k): v for k, v in rec["workers"].items()}


def wait_stats(p, check, timeout: float = 10.0) -> tuple[dict, dict[int, dict]]:
    deadline = time.monotonic() + timeout
    while True:
        rr, workers = stats(p)
        if check(rr, workers) or time.monotonic() > deadline:
            return rr, workers
        time.sleep(0.05)


class Clients:
    """`n` clients from `source` connected at once, each waiting for its answer on a thread."""

    def __init__(self, port: int, source: str, n: int) -> None:
        self.answers: list[int] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._done = threading.Condition(self._lock)
        self.socks = [
            socket.create_connection(("127.0.0.1", port), timeout=20, source_address=(source, 0))
            for _ in range(n)
        ]
        self.threads = [threading.Thread(target=self._read, args=(c,)) for c in self.socks]
        for t in self.threads:
            t.start()

    def _read(self, c: socket.socket) -> None:
        try:
            with c:
                text = read_line(c)
            with self._lock:
                self.answers.append(int(text))
                self._done.notify_all()
        except (OSError, ValueError) as e:
            with self._lock:
                self.errors.append(repr(e))
                self._done.notify_all()

    def wait(self, timeout: float = 15.0) -> None:
        """Until every client has its answer or an error (or `timeout` s passed)."""
        with self._lock:
            self._done.wait_for(
                lambda: len(self.answers) + len(self.errors) == len(self.socks), timeout
            )

    def close(self) -> None:
        for c in self.socks:
            c.close()
        for t in self.threads:
            t.join(5)


def test_hash_serves_the_other_workers_clients_while_one_worker_is_stalled(start_primary):
    p, port, pids, home = start(start_primary)
    stalled = other = None
    try:
        os.kill(pids[1], signal.SIGSTOP)
        stalled = Clients(port, home[1], 2 * WINDOW)  # more than its window: some wait
        wait_stats(p, lambda rr, w: w[1]["pending"] == WINDOW and rr["queued"] >= 1)
        other = Clients(port, home[2], WINDOW)  # after them, for the worker with room
        other.wait()
        assert other.errors == [] and other.answers == [pids[2]] * WINDOW, (other.answers, pids)
        rr, workers = stats(p)
        assert stalled.answers == [] and workers[1]["pending"] == WINDOW, workers
        assert rr["queued"] == WINDOW, rr  # the rest of worker 1's clients wait for it
        os.kill(pids[1], signal.SIGCONT)
        stalled.wait()
        assert stalled.errors == [], stalled.errors
        assert stalled.answers == [pids[1]] * 2 * WINDOW, (stalled.answers, pids)  # still sticky
        rr, _ = stats(p)
        assert rr["queued"] == rr["dropped"] == rr["requeued"] == 0, rr
        assert rr["handed"] == rr["accepted"], rr
    finally:
        os.kill(pids[1], signal.SIGCONT)
        for clients in (stalled, other):
            if clients is not None:
                clients.close()
        stop(p)


def test_waiting_is_bounded_and_a_dying_workers_waiting_clients_go_to_another(start_primary):
    cap = 3
    p, port, pids, home = start(start_primary, env={"CLUSTERLAB_RR_WAITING": str(cap)})
    clients = None
    try:
        probes = stats(p)[0]["accepted"]
        os.kill(pids[1], signal.SIGSTOP)
        clients = Clients(port, home[1], WINDOW + cap + 3)  # 3 beyond the bound: backlog
        held = lambda rr, w: w[1]["pending"] == WINDOW and rr["queued"] == cap  # noqa: E731
        rr, workers = wait_stats(p, held)
        assert held(rr, workers), (rr, workers)
        # Two more round trips through the primary's loop: a listener still read would have
        # given up the 3 connections in the backlog.
        stats(p)
        rr, _ = stats(p)
        assert rr["accepted"] == probes + WINDOW + cap and rr["queued"] == cap, rr
        os.kill(pids[1], signal.SIGKILL)
        p.wait_for("exit", count=1, timeout=10)
        clients.wait()
        assert clients.errors == [], clients.errors
        assert clients.answers == [pids[2]] * len(clients.socks), (clients.answers, pids)
        rr, _ = stats(p)
        assert rr["accepted"] == probes + len(clients.socks), rr
        # only its window was read back from it; the waiting ones were never handed to it
        assert rr["requeued"] == WINDOW and rr["dropped"] == rr["queued"] == 0, rr
        assert rr["handed"] == rr["accepted"] + rr["requeued"], rr
    finally:
        if clients is not None:
            clients.close()
        stop(p)
