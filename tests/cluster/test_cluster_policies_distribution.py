"""Where each built-in scheduler sends connections, with real workers and sockets: least-conn
avoids a worker holding connections, p2c/jiq pick an idle worker, hash sticks to the client
address, weighted follows the weights, and worker death loses nothing under any of them."""

import collections
import os
import signal
import socket
import threading
import time

import pytest

pytestmark = pytest.mark.timeout(40)

BUILTIN = ["rr", "least-conn", "p2c", "jiq", "hash", "hash-bounded", "weighted", "random"]

PRIMARY = """
        import signal
        if cluster.is_primary:
            cluster.setup_primary(scheduler={policy!r})
            cluster.on("listening", lambda w, a: out("listening", id=w.id, port=a.port,
                                                      wpid=w.process.pid))
            cluster.on("exit", lambda w, c, s: out("exit", id=w.id,
                                                   rr=cluster.round_robin_stats()))
            for weight in {weights!r}:
                cluster.fork(weight=weight)
            cluster._primary.loop.add_signal_handler(
                signal.SIGUSR2, lambda: out("stats", workers=cluster._primary.handles.worker_stats()))
        else:
"""

# Answers each connection with the worker's pid and closes it.
SIMPLE = """
            s = cluster.listen(0, "127.0.0.1")
            s.settimeout(0.1)
            while s.fileno() >= 0 and cluster.worker.is_connected():
                try:
                    conn, _ = s.accept()
                except TimeoutError:
                    continue
                except OSError:
                    break
                with conn:
                    conn.sendall(f"{os.getpid()}\\n".encode())
"""

# Answers with the pid and keeps each connection open until the client closes it.
HOLDING = """
            s = cluster.listen(0, "127.0.0.1")
            def hold(conn):
                with conn:
                    conn.sendall(f"{os.getpid()}\\n".encode())
                    conn.settimeout(20)
                    try:
                        conn.recv(1)
                    except OSError:
                        pass
            s.settimeout(0.1)
            while s.fileno() >= 0 and cluster.worker.is_connected():
                try:
                    conn, _ = s.accept()
                except TimeoutError:
                    continue
                except OSError:
                    break
                threading.Thread(target=hold, args=(conn,), daemon=True).start()
"""

# clusterlab.servers' threaded HTTP server: /slow answers its headers, then stays in flight
# until the release file exists; anything else answers at once. X-Pid names the worker.
HTTP = """
            from http.server import BaseHTTPRequestHandler
            from clusterlab.servers import ThreadingHTTPServer
            class Handler(BaseHTTPRequestHandler):
                def do_GET(self):
                    self.send_response(200)
                    self.send_header("X-Pid", str(os.getpid()))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    deadline = time.monotonic() + 20
                    while (self.path == "/slow" and not os.path.exists({release!r})
                           and time.monotonic() < deadline):
                        time.sleep(0.02)
                def log_message(self, *args):
                    pass
            ThreadingHTTPServer(("127.0.0.1", 0), Handler).serve_forever()
"""

# Worker 1 listens and never accepts; the others answer with their pid.
ONE_BUSY = """
            if cluster.worker.id == 1:
                s = cluster.listen(0, "127.0.0.1")
                while cluster.worker.is_connected():
                    time.sleep(0.05)
            else:
""" + SIMPLE.replace("\n            ", "\n                ")


def start(start_primary, policy: str, body: str, workers: int, weights=None):
    weights = weights or [1] * workers
    p = start_primary(PRIMARY.format(policy=policy, weights=weights) + body)
    listening = p.wait_for("listening", count=workers, timeout=20)
    pids = {rec["id"]: rec["wpid"] for rec in listening}
    return p, listening[0]["port"], pids


def stop(p) -> None:
    p.send_signal(signal.SIGTERM)
    assert p.wait(20) in (0, 143), p.output()


def worker_stats(p) -> dict[int, dict]:
    """The primary's per-worker counters, now."""
    before = len(p.records("stats"))
    p.send_signal(signal.SIGUSR2)
    rec = p.wait_for("stats", count=before + 1, timeout=10)[-1]
    return {int(k): v for k, v in rec["workers"].items()}


def read_line(c: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\n"):
        b = c.recv(64)
        if not b:
            break
        data += b
    return data.decode()


def pid_of(port: int, source: str | None = None) -> int:
    with socket.create_connection(
        ("127.0.0.1", port), timeout=10, source_address=(source, 0) if source else None
    ) as c:
        return int(read_line(c))


def test_least_conn_sends_new_connections_away_from_a_worker_holding_many(start_primary):
    p, port, pids = start(start_primary, "least-conn", HOLDING, workers=3)
    held: list[tuple[socket.socket, int]] = []
    try:
        while sum(1 for _, pid in held if pid == pids[1]) < 6:
            c = socket.create_connection(("127.0.0.1", port), timeout=10)
            held.append((c, int(read_line(c))))
        for c, pid in held:  # only worker 1 keeps its connections
            if pid != pids[1]:
                c.close()
        held = [(c, pid) for c, pid in held if pid == pids[1]]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            stats = worker_stats(p)
            if stats[1]["open"] == 6 and stats[2]["open"] == stats[3]["open"] == 0:
                break
            time.sleep(0.05)
        assert stats[1]["open"] == 6 and stats[2]["open"] == stats[3]["open"] == 0, stats
        got = collections.Counter(pid_of(port) for _ in range(20))
        assert got[pids[1]] == 0, (got, pids)
        assert got[pids[2]] > 0 and got[pids[3]] > 0, (got, pids)  # ties in turn
    finally:
        for c, _ in held:
            c.close()
        stop(p)


@pytest.mark.parametrize("policy", ["p2c", "jiq"])
def test_idle_worker_is_chosen_while_one_exists(start_primary, tmp_path, policy):
    release = tmp_path / "release"
    p, port, pids = start(start_primary, policy, HTTP.format(release=str(release)), workers=3)
    # a server says it counts its requests just after its listen ('listening'): wait for all
    deadline = time.monotonic() + 10
    while any(s["in_flight"] is None for s in worker_stats(p).values()):
        assert time.monotonic() < deadline, "a worker's server never said it counts requests"
        time.sleep(0.05)
    slow = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        slow.sendall(b"GET /slow HTTP/1.0\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += slow.recv(4096)
        busy = int(head.split(b"X-Pid: ")[1].split(b"\r\n")[0])
        stats = worker_stats(p)
        assert sorted(s["in_flight"] for s in stats.values()) == [0, 0, 1], stats
        got = collections.Counter()
        for _ in range(20):
            # To the server's close: the request is over in the primary's view too.
            with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
                c.sendall(b"GET / HTTP/1.0\r\n\r\n")
                answer = b""
                while chunk := c.recv(4096):
                    answer += chunk
            got[int(answer.split(b"X-Pid: ")[1].split(b"\r\n")[0])] += 1
        assert got[busy] == 0, (got, busy)
        assert sum(got.values()) == 20
    finally:
        release.write_text("")
        slow.close()
        stop(p)


def test_hash_keeps_each_client_address_on_one_worker_and_moves_only_a_leavers(start_primary):
    p, port, pids = start(start_primary, "hash", SIMPLE, workers=3)
    try:
        sources = [f"127.0.0.{i}" for i in range(2, 12)]
        seen = {src: {pid_of(port, src) for _ in range(10)} for src in sources}
        assert all(len(s) == 1 for s in seen.values()), seen
        before = {src: s.pop() for src, s in seen.items()}
        leaver = collections.Counter(before.values()).most_common(1)[0][0]
        leaver_id = next(wid for wid, pid in pids.items() if pid == leaver)
        os.kill(leaver, signal.SIGKILL)
        p.wait_for("exit", count=1, timeout=10)
        after = {src: {pid_of(port, src) for _ in range(3)} for src in sources}
        assert all(len(s) == 1 for s in after.values()), after
        for src in sources:
            now = next(iter(after[src]))
            if before[src] == leaver:
                assert now != leaver, (src, before, after)
            else:
                assert now == before[src], (src, before, after, leaver_id)
    finally:
        stop(p)


def test_hash_spreads_many_client_addresses_evenly_over_the_workers(start_primary):
    """Rendezvous scores must be independent per worker: Python's tuple `hash` of (address,
    worker id) gave 4 workers 19/24/27/30 % of 20,000 addresses, whatever the seed."""
    p, port, pids = start(start_primary, "hash", SIMPLE, workers=4)
    try:
        total = 2000
        got = collections.Counter(
            pid_of(port, f"127.1.{i >> 8}.{i & 255}") for i in range(1, total + 1)
        )
        expected = total / 4
        sigma = (total * 0.25 * 0.75) ** 0.5
        for wid in pids:  # within 4 standard deviations of the binomial share
            assert abs(got[pids[wid]] - expected) <= 4 * sigma, (got, pids)
    finally:
        stop(p)


def nothing_open(p) -> None:
    """Wait until the primary has counted every connection closed (a worker counts its close
    a moment after the client read its answer)."""
    deadline = time.monotonic() + 10
    while sum(s["open"] for s in worker_stats(p).values()) > 0:
        assert time.monotonic() < deadline, worker_stats(p)
        time.sleep(0.02)


@pytest.mark.parametrize("policy", ["hash", "hash-bounded"])
def test_a_busy_clients_connections_stay_on_its_worker_unless_the_load_is_bounded(
    start_primary, policy
):
    """Ten connections held open from one address: `hash` keeps them all on the client's
    worker; `hash-bounded` keeps that worker under 1.25 x the mean load (ceil(1.25 * 10 / 2) =
    7 of them), the rest on the other, and sends the client home once nothing is held."""
    p, port, pids = start(start_primary, policy, HOLDING, workers=2)
    held: list[socket.socket] = []
    try:
        home = pid_of(port, "127.0.0.9")
        nothing_open(p)
        got = collections.Counter()
        for _ in range(10):
            c = socket.create_connection(
                ("127.0.0.1", port), timeout=10, source_address=("127.0.0.9", 0)
            )
            held.append(c)
            got[int(read_line(c))] += 1
        if policy == "hash":
            assert got == {home: 10}, (got, home)
        else:
            assert got[home] == 7 and sum(got.values()) == 10, (got, home)
        for c in held:
            c.close()
        held.clear()
        for _ in range(3):
            nothing_open(p)
            assert pid_of(port, "127.0.0.9") == home
    finally:
        for c in held:
            c.close()
        stop(p)


def test_weighted_shares_follow_the_weights(start_primary):
    weights = [1, 2, 3]
    p, port, pids = start(start_primary, "weighted", SIMPLE, workers=3, weights=weights)
    try:
        total = 2000
        got = collections.Counter(pid_of(port) for _ in range(total))
        for wid, weight in zip((1, 2, 3), weights, strict=True):
            expected = total * weight / sum(weights)
            assert abs(got[pids[wid]] - expected) <= 0.05 * expected, (got, pids)
    finally:
        stop(p)


class Clients:
    """`n` clients connected at once, each waiting for its answer on a thread."""

    def __init__(self, port: int, n: int) -> None:
        self.answers: list[str] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self.socks = [
            socket.create_connection(
                ("127.0.0.1", port), timeout=20, source_address=(f"127.0.0.{2 + i}", 0)
            )
            for i in range(n)
        ]
        self.threads = [threading.Thread(target=self._read, args=(c,)) for c in self.socks]
        for t in self.threads:
            t.start()

    def _read(self, c: socket.socket) -> None:
        try:
            with c:
                text = read_line(c)
            with self._lock:
                self.answers.append(text)
        except OSError as e:
            with self._lock:
                self.errors.append(repr(e))

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))


@pytest.mark.parametrize("policy", BUILTIN)
def test_worker_death_loses_no_connection(start_primary, policy):
    p, port, pids = start(start_primary, policy, ONE_BUSY, workers=2)
    clients = None
    try:
        clients = Clients(port, 12)  # from 12 addresses: some hash to worker 1
        # Until worker 1 (which never takes any) was handed some, or all were answered.
        held = wait_stats(p, lambda s: s["pending"] >= 1 or len(clients.answers) == 12)
        os.kill(pids[1], signal.SIGKILL)
        clients.join(15)
        exit_rec = p.wait_for("exit", count=1, timeout=10)[0]
        assert clients.errors == [], clients.errors
        assert [int(a) for a in clients.answers] == [pids[2]] * 12, clients.answers
        assert exit_rec["rr"]["dropped"] == 0, exit_rec
        # what worker 1 held was taken back and served by worker 2
        assert exit_rec["rr"]["requeued"] >= held["pending"], (exit_rec, held)
    finally:
        if clients is not None:
            for c in clients.socks:
                c.close()
        stop(p)


# What a scheduler sees of a worker's servers: requests in flight (clusterlab.servers count them
# in shared memory) and open connections (closes counted the same way); a server without a
# notion of requests reports none. /slow (or "slow") stays in flight until the release file.
STATE_SERVERS = {
    "ThreadingHTTPServer": HTTP,
    "serve_asgi": """
            import asyncio
            from clusterlab.servers import serve_asgi
            async def app(scope, receive, send):
                while scope["path"] == "/slow" and not os.path.exists({release!r}):
                    await asyncio.sleep(0.02)
                await send({{"type": "http.response.start", "status": 200,
                            "headers": [(b"x-pid", str(os.getpid()).encode())]}})
                await send({{"type": "http.response.body", "body": b""}})
            serve_asgi(app, "127.0.0.1", 0, lifespan="off")
""",
    "serve_wsgi": """
            from clusterlab.servers import serve_wsgi
            def app(environ, start_response):
                while environ["PATH_INFO"] == "/slow" and not os.path.exists({release!r}):
                    time.sleep(0.02)
                start_response("200 OK", [("X-Pid", str(os.getpid()))])
                return [b""]
            serve_wsgi(app, "127.0.0.1", 0)
""",
    "start_server": """
            import asyncio
            from clusterlab.servers import start_server
            async def handle(reader, writer):
                if (await reader.readline()).startswith(b"GET /slow"):
                    while not os.path.exists({release!r}):
                        await asyncio.sleep(0.02)
                writer.write(b"done")
                await writer.drain()
                writer.close()
            async def main():
                async with await start_server(handle, "127.0.0.1", 0) as server:
                    await server.serve_forever()
            asyncio.run(main())
""",
}

# uvloop: connections are taken with HandoffServer; uvloop closes them by detaching the socket.
STATE_SERVERS["serve_asgi_uvloop"] = STATE_SERVERS["serve_asgi"].replace(
    'lifespan="off"', 'lifespan="off", loop="uvloop"'
)


def wait_stats(p, check, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        stats = worker_stats(p)[1]
        if check(stats) or time.monotonic() > deadline:
            return stats
        time.sleep(0.05)


@pytest.mark.parametrize("kind", sorted(STATE_SERVERS))
def test_servers_report_requests_in_flight_and_closes(start_primary, tmp_path, kind):
    release = tmp_path / "release"
    body = STATE_SERVERS[kind].format(release=str(release))
    p, port, _ = start(start_primary, "p2c", body, workers=1)
    counted = kind != "start_server"
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            c.sendall(b"GET /slow HTTP/1.0\r\n\r\n")
            busy = wait_stats(
                p, lambda s: s["open"] == 1 and s["in_flight"] == (1 if counted else None)
            )
            assert (busy["open"], busy["in_flight"]) == (1, 1 if counted else None), busy
            release.write_text("")
            while c.recv(4096):
                pass
        idle = wait_stats(
            p, lambda s: s["open"] == 0 and s["in_flight"] == (0 if counted else None)
        )
        assert (idle["open"], idle["in_flight"]) == (0, 0 if counted else None), idle
        assert idle["taken"] == 1
    finally:
        release.write_text("")
        stop(p)
