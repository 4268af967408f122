"""Many RR hand-offs (50k when long): the primary's open descriptors return to their baseline,
and no connection is dropped."""

import signal
import socket
import threading
import time

import psutil
import pytest

from .support import pick, wait_until

TARGET = "RR hand-offs"
HANDOFFS = pick(5_000, 50_000)
CLIENTS = 4
pytestmark = pytest.mark.timeout(pick(60, 300))

PRIMARY = """
import asyncio, signal

async def main():
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.add_signal_handler(signal.SIGUSR2, lambda: out("rr", **cluster.round_robin_stats()))
    loop.add_signal_handler(signal.SIGTERM, lambda: cluster.disconnect(
        lambda: done.done() or done.set_result(None)))
    cluster.on("listening", lambda w, a: out("listening", id=w.id, port=a.port))
    for _ in range(2):
        cluster.fork()
    await done

if cluster.is_primary:
    asyncio.run(main())
else:
    serve_pid(cluster.listen(port=0, host="127.0.0.1"))
"""


class Connections:
    """`CLIENTS` threads opening `total` connections in all, one after another each: connect,
    read the worker's answer to EOF, close."""

    def __init__(self, port: int, total: int) -> None:
        self.port = port
        self.left = total
        self.served = 0
        self.failed: list[str] = []
        self._lock = threading.Lock()

    def run(self) -> None:
        threads = [threading.Thread(target=self._client, daemon=True) for _ in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(pick(60, 280))
        assert not any(t.is_alive() for t in threads), "clients still running"

    def _client(self) -> None:
        while True:
            with self._lock:
                if self.left == 0:
                    return
                self.left -= 1
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=10) as c:
                    data = b""
                    while chunk := c.recv(64):
                        data += chunk
                ok = data.strip().isdigit()
            except OSError as exc:
                ok, data = False, repr(exc).encode()
            with self._lock:
                if ok:
                    self.served += 1
                else:
                    self.failed.append(data.decode(errors="replace"))


def test_rr_handoffs_leave_the_primary_descriptors_at_baseline(start_primary, figure):
    p = start_primary(PRIMARY, env={"CLUSTERLAB_SCHED_POLICY": "rr"})
    port = p.wait_for("listening", count=2, timeout=30)[0]["port"]
    primary = psutil.Process(p.pid)
    warm = Connections(port, 200)
    warm.run()
    time.sleep(0.3)
    baseline = primary.num_fds()
    peak = [baseline]
    sampling = threading.Event()

    def sample():
        while not sampling.wait(0.05):
            try:
                peak[0] = max(peak[0], primary.num_fds())
            except psutil.NoSuchProcess:
                return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    load = Connections(port, HANDOFFS)
    started = time.monotonic()
    try:
        load.run()
    finally:
        sampling.set()
        sampler.join(5)
    took = time.monotonic() - started
    assert not load.failed, f"{len(load.failed)} failed: {load.failed[:5]}"
    assert load.served == HANDOFFS
    after = wait_until(
        lambda: (n := primary.num_fds()) == baseline and n or None,
        5,
        f"the primary's descriptors back to {baseline}",
    )
    p.send_signal(signal.SIGUSR2)
    rr = p.wait_for("rr", timeout=10)[0]
    assert rr["dropped"] == 0 and rr["queued"] == 0, rr
    assert rr["handed"] >= HANDOFFS + warm.served
    p.send_signal(signal.SIGTERM)
    assert p.wait(20) == 0
    figure(
        TARGET,
        f"{HANDOFFS} hand-offs in {took:.1f} s ({HANDOFFS / took:.0f}/s): primary "
        f"descriptors {baseline} before, peak {peak[0]}, {after} after; "
        f"0 failed, RR dropped 0",
    )
