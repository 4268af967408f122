"""cluster.listen(...) in workers under SCHED_RR, SCHED_NONE and SCHED_REUSEPORT: port sharing,
exclusive, IPv6, Unix paths, UDP, bind errors, releasing the port."""

import errno
import os
import signal
import socket

import pytest
from conftest import free_port, has_ipv6, quiet_port

pytestmark = pytest.mark.timeout(30)

POLICIES = ["rr", "none", "reuseport"]


def policy_env(policy: str) -> dict[str, str]:
    return {"CLUSTERLAB_SCHED_POLICY": policy}


def stop(p, expected: int = 143) -> None:
    """End a serving primary the way an operator would (SIGTERM), and check it went cleanly."""
    p.send_signal(signal.SIGTERM)
    assert p.wait(20) == expected, p.output()


def connect_read(
    port: int,
    host: str = "127.0.0.1",
    family: int = socket.AF_INET,
    timeout: float = 5.0,
    payload: bytes = b"",
) -> str:
    with socket.socket(family, socket.SOCK_STREAM) as c:
        c.settimeout(timeout)
        c.connect((host, port) if family != socket.AF_UNIX else host)
        if payload:
            c.sendall(payload)
        data = b""
        while True:
            b = c.recv(4096)
            if not b:
                return data.decode()
            data += b


# A primary that forks N workers which serve their pid on a shared listen(...) and reports
# every 'listening'. Format with n= and listen= (the call's arguments).
SERVING = """
        if cluster.is_primary:
            cluster.on("listening", lambda w, a: out("listening", id=w.id, address=a.address,
                                                     port=a.port, address_type=a.address_type))
            for _ in range({n}):
                cluster.fork()
        else:
            s = cluster.listen({listen})
            out("worker", id=cluster.worker.id)
            serve_pid(s)
"""


@pytest.mark.parametrize("policy", POLICIES)
def test_port_zero_gives_every_workers_nth_listen_the_same_port(run_primary, policy):
    # doc "listen(0)": random the first time, the same for every worker's Nth listen(0)
    r = run_primary(
        """
        if cluster.is_primary:
            cluster.on("listening", lambda w, a: out("listening", id=w.id, port=a.port))
            for _ in range(3):
                cluster.fork()
            # every worker keeps its sockets until all have listened (a port nobody holds any
            # more is released, and a later listen(0) gets a new one)
            n = {"done": 0}
            def on_message(w, m, h):
                n["done"] += 1
                if n["done"] == 3:
                    cluster.disconnect()
            cluster.on("message", on_message)
        else:
            a = cluster.listen(port=0, host="127.0.0.1")
            b = cluster.listen(port=0, host="127.0.0.1")
            out("ports", id=cluster.worker.id, a=a.getsockname()[1], b=b.getsockname()[1])
            cluster.worker.send("done")
            wait_disconnect()
    """,
        env=policy_env(policy),
    ).check()
    recs = r.records("ports")
    assert len(recs) == 3
    firsts = {rec["a"] for rec in recs}
    seconds = {rec["b"] for rec in recs}
    assert len(firsts) == 1 and len(seconds) == 1, recs
    assert firsts != seconds, "the 1st and 2nd listen(0) are different endpoints"
    assert 0 not in firsts | seconds
    reported = sorted(rec["port"] for rec in r.records("listening"))
    assert reported == sorted([rec["a"] for rec in recs] + [rec["b"] for rec in recs])


@pytest.mark.parametrize("policy", POLICIES)
def test_shared_port_serves_connections(start_primary, policy):
    p = start_primary(
        SERVING.format(n=2, listen='port=0, host="127.0.0.1"'), env=policy_env(policy)
    )
    listening = p.wait_for("listening", count=2, timeout=15)
    port = listening[0]["port"]
    assert listening[1]["port"] == port
    worker_pids = {rec["pid"] for rec in p.wait_for("worker", count=2)}
    got = [int(connect_read(port)) for _ in range(40)]
    assert set(got) <= worker_pids
    if policy == "rr":
        assert set(got) == worker_pids, "round-robin must use both workers"
    stop(p)


@pytest.mark.parametrize("policy", POLICIES)
def test_fixed_port_shared_by_workers(start_primary, policy):
    port = free_port()
    p = start_primary(
        SERVING.format(n=2, listen=f'port={port}, host="127.0.0.1"'), env=policy_env(policy)
    )
    listening = p.wait_for("listening", count=2, timeout=15)
    assert [rec["port"] for rec in listening] == [port, port]
    assert connect_read(port).strip().isdigit()
    stop(p)


@pytest.mark.parametrize("policy", POLICIES)
def test_exclusive_gives_each_worker_its_own_port(run_primary, policy):
    # test-net-listen-exclusive-random-ports
    r = run_primary(
        """
        if cluster.is_primary:
            cluster.on("listening", lambda w, a: out("listening", id=w.id, port=a.port))
            for _ in range(3):
                cluster.fork()
            n = {"done": 0}
            def on_message(w, m, h):
                n["done"] += 1
                if n["done"] == 3:
                    cluster.disconnect()
            cluster.on("message", on_message)
        else:
            s = cluster.listen(port=0, host="127.0.0.1", exclusive=True)
            port = s.getsockname()[1]
            # the worker owns the socket: it is a real listening socket bound to that port
            acc = s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            out("port", id=cluster.worker.id, port=port, acceptconn=acc)
            cluster.worker.send("done")
            wait_disconnect()
    """,
        env=policy_env(policy),
    ).check()
    recs = r.records("port")
    assert len({rec["port"] for rec in recs}) == 3, recs
    assert all(rec["acceptconn"] == 1 for rec in recs)
    assert sorted(rec["port"] for rec in r.records("listening")) == sorted(
        rec["port"] for rec in recs
    )


@pytest.mark.parametrize("policy", POLICIES)
def test_ipv6_listen(start_primary, policy):
    if not has_ipv6():
        pytest.skip("no IPv6 loopback")
    p = start_primary(SERVING.format(n=2, listen='port=0, host="::1"'), env=policy_env(policy))
    listening = p.wait_for("listening", count=2, timeout=15)
    assert {rec["port"] for rec in listening} == {listening[0]["port"]}
    for rec in listening:
        assert rec["address"] == "::1"
        assert rec["address_type"] == 6
    assert connect_read(listening[0]["port"], host="::1", family=socket.AF_INET6).strip().isdigit()
    stop(p)


@pytest.mark.parametrize("policy", POLICIES)
def test_unix_path_listen(start_primary, tmp_path, policy):
    path = str(tmp_path / "srv.sock")
    p = start_primary(SERVING.format(n=2, listen=f"path={path!r}"), env=policy_env(policy))
    listening = p.wait_for("listening", count=2, timeout=8)
    for rec in listening:
        assert rec["address_type"] == -1
        assert rec["address"] == path
    worker_pids = {rec["pid"] for rec in p.wait_for("worker", count=2)}
    got = {int(connect_read(0, host=path, family=socket.AF_UNIX)) for _ in range(10)}
    assert got <= worker_pids
    stop(p)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("family", ["udp4", "udp6"])
def test_udp_shared_socket_spreads_datagrams(start_primary, policy, family):
    # test-cluster-dgram-1: workers share one UDP socket (whatever the policy); each takes its
    # share of the datagrams.
    host = "127.0.0.1" if family == "udp4" else "::1"
    if family == "udp6" and not has_ipv6():
        pytest.skip("no IPv6 loopback")
    p = start_primary(
        f"""
        if cluster.is_primary:
            cluster.on("listening", lambda w, a: out("listening", id=w.id, port=a.port,
                                                     address=a.address,
                                                     address_type=a.address_type))
            cluster.fork(); cluster.fork()
        else:
            s = cluster.listen(port=0, host={host!r}, udp=True)
            out("sock", id=cluster.worker.id, ino=os.fstat(s.fileno()).st_ino,
                type=int(s.type))
            got = [s.recvfrom(100)[0].decode() for _ in range(10)]
            out("got", id=cluster.worker.id, n=len(got), data=got)
            s.close()
            cluster.worker.disconnect()
    """,
        env=policy_env(policy),
    )
    listening = p.wait_for("listening", count=2, timeout=15)
    port = listening[0]["port"]
    assert listening[1]["port"] == port
    assert {rec["address_type"] for rec in listening} == {family}
    socks = p.wait_for("sock", count=2)
    assert socks[0]["ino"] == socks[1]["ino"], "UDP is always one shared socket"
    assert socks[0]["type"] == int(socket.SOCK_DGRAM)
    fam = socket.AF_INET if family == "udp4" else socket.AF_INET6
    with socket.socket(fam, socket.SOCK_DGRAM) as c:
        for i in range(20):
            c.sendto(f"d{i}".encode(), (host, port))
    assert p.wait(15) == 0, p.output()
    got = p.records("got")
    assert sorted(rec["n"] for rec in got) == [10, 10]
    assert sorted(d for rec in got for d in rec["data"]) == sorted(f"d{i}" for i in range(20))


@pytest.mark.parametrize("policy", POLICIES + ["exclusive"])
def test_eaddrinuse_raised_in_worker_primary_carries_on(run_primary, policy):
    # test-cluster-shared-handle-bind-error / test-cluster-eaddrinuse / test-cluster-ipc-throw:
    # the error reaches the worker with its errno; the primary survives; after the port is
    # freed another worker's listen succeeds.
    port = free_port()
    exclusive = policy == "exclusive"
    env = policy_env("rr" if exclusive else policy)
    r = run_primary(
        f"""
        import errno
        PORT = {port}
        if cluster.is_primary:
            blocker = socket.socket()
            blocker.bind(("127.0.0.1", PORT))
            blocker.listen()
            w1 = cluster.fork()
            def on_message(worker, m, h):
                out("primary_got", id=worker.id, m=m)
                if worker.id == 1:
                    blocker.close()
                    w2 = cluster.fork()
                worker.disconnect()
            cluster.on("message", on_message)
            cluster.on("exit", lambda w, c, s: out("exit", id=w.id, code=c))
        else:
            try:
                s = cluster.listen(port=PORT, host="127.0.0.1", exclusive={exclusive})
            except OSError as e:
                out("error", id=cluster.worker.id, errno=e.errno,
                    connected=cluster.worker.is_connected())
                cluster.worker.send("failed")
            else:
                out("ok", id=cluster.worker.id, port=s.getsockname()[1])
                cluster.worker.send("listening")
            wait_disconnect()
    """,
        env=env,
    ).check()
    err = r.one("error")
    assert err["id"] == 1
    assert err["errno"] == errno.EADDRINUSE
    assert err["connected"] is True
    ok = r.one("ok")
    assert ok["id"] == 2 and ok["port"] == port
    assert sorted((rec["id"], rec["code"]) for rec in r.records("exit")) == [(1, 0), (2, 0)]


@pytest.mark.parametrize("policy", ["rr", "none"])
def test_second_listen_on_same_fixed_port_in_one_worker_is_eaddrinuse(run_primary, policy):
    # test-cluster-listen-twice-same-port: the 2nd listen on a fixed port in one worker is a
    # different endpoint (Nth listen) and fails with EADDRINUSE; closing the 1st then works.
    port = free_port()
    r = run_primary(
        f"""
        if cluster.is_primary:
            cluster.fork()
        else:
            a = cluster.listen(port={port}, host="127.0.0.1")
            try:
                b = cluster.listen(port={port}, host="127.0.0.1")
            except OSError as e:
                out("second", errno=e.errno)
            else:
                out("second", errno=None)
            cluster.worker.disconnect()
    """,
        env=policy_env(policy),
    ).check()
    assert r.one("second")["errno"] == errno.EADDRINUSE


@pytest.mark.parametrize("policy", POLICIES)
def test_port_reacquired_by_another_worker_after_close(run_primary, policy):
    # test-cluster-port-reuse-between-workers
    port = free_port()
    r = run_primary(
        f"""
        PORT = {port}
        if cluster.is_primary:
            w1 = cluster.fork()
            w2 = cluster.fork()
            # step through: w1 listens+closes, then w2, then w1 again
            order = [(w1, "listen_close"), (w2, "listen_close"), (w1, "listen_close")]
            def step():
                if order:
                    w, cmd = order.pop(0)
                    w.send(cmd)
                else:
                    cluster.disconnect()
            cluster.on("message", lambda w, m, h: (out("result", id=w.id, m=m), step())
                       if m != READY else None)
            n = {{"ready": 0}}
            def on_ready():
                n["ready"] += 1
                if n["ready"] == 2:
                    step()
            when_ready(w1, on_ready); when_ready(w2, on_ready)
        else:
            def on_message(m, h):
                try:
                    s = cluster.listen(port=PORT, host="127.0.0.1")
                    s.close()
                    cluster.worker.send("ok")
                except OSError as e:
                    cluster.worker.send(f"errno {{e.errno}}")
            cluster.worker.on("message", on_message)
            ready()
            wait_disconnect()
    """,
        env=policy_env(policy),
    ).check()
    assert [(rec["id"], rec["m"]) for rec in r.records("result")] == [
        (1, "ok"),
        (2, "ok"),
        (1, "ok"),
    ]


@pytest.mark.parametrize("how", ["close", "exit"])
@pytest.mark.parametrize("policy", POLICIES)
def test_port_released_when_no_worker_holds_it(run_primary, policy, how):
    # Closing the socket in every worker (or every worker going away) releases the port: the
    # primary can bind it again. The primary polls from asyncio so its cluster loop keeps
    # running (and can process the workers' close notices) while it waits.
    r = run_primary(
        f"""
        import asyncio
        HOW = {how!r}
        async def try_bind(port):
            deadline = time.time() + 3
            while True:
                try:
                    with socket.socket() as t:
                        t.bind(("127.0.0.1", port))
                        t.listen()
                    return True
                except OSError as e:
                    if time.time() > deadline:
                        return repr(e)
                    await asyncio.sleep(0.02)
        async def main():
            loop = asyncio.get_running_loop()
            ports = {{}}
            got_ports = loop.create_future()
            all_exited = loop.create_future()
            closed = []
            all_closed = loop.create_future()
            def on_message(w, m, h):
                if m == "closed":
                    closed.append(w.id)
                    if len(closed) == 2:
                        all_closed.set_result(None)
                    return
                ports[w.id] = m
                if len(ports) == 2:
                    got_ports.set_result(None)
            cluster.on("message", on_message)
            exits = []
            def on_exit(w, c, s):
                exits.append(c)
                if len(exits) == 2:
                    all_exited.set_result(None)
            cluster.on("exit", on_exit)
            cluster.fork(); cluster.fork()
            await asyncio.wait_for(got_ports, 15)
            port = next(iter(set(ports.values())))
            if HOW == "exit":
                cluster.disconnect()
                await asyncio.wait_for(all_exited, 15)
            else:
                for w in list(cluster.workers.values()):
                    w.send("close")
                await asyncio.wait_for(all_closed, 15)
            out("rebind", port=port, same=len(set(ports.values())) == 1,
                result=await try_bind(port))
            if HOW == "close":
                cluster.disconnect()
                await asyncio.wait_for(all_exited, 15)
        if cluster.is_primary:
            asyncio.run(main())
        else:
            s = cluster.listen(port=0, host="127.0.0.1")
            def on_message(m, h):
                s.close()
                cluster.worker.send("closed")
            cluster.worker.on("message", on_message)
            cluster.worker.send(s.getsockname()[1])
            wait_disconnect()
    """,
        env=policy_env(policy),
    ).check()
    rec = r.one("rebind")
    assert rec["same"] is True
    assert rec["result"] is True, r.output()


@pytest.mark.parametrize("policy", POLICIES)
def test_listen_without_host_accepts_on_loopback(start_primary, policy):
    p = start_primary(SERVING.format(n=1, listen="port=0"), env=policy_env(policy))
    port = p.wait_for("listening", timeout=15)[0]["port"]
    assert port > 0
    assert connect_read(port).strip().isdigit()
    stop(p)


def test_reuseport_workers_own_separate_reuseport_sockets(run_primary):
    r = run_primary(
        """
        if cluster.is_primary:
            cluster.fork(); cluster.fork()
            n = {"done": 0}
            def on_message(w, m, h):
                n["done"] += 1
                if n["done"] == 2:
                    cluster.disconnect()
            cluster.on("message", on_message)
        else:
            s = cluster.listen(port=0, host="127.0.0.1")
            out("sock", ino=os.fstat(s.fileno()).st_ino, port=s.getsockname()[1],
                reuseport=s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT),
                acceptconn=s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
            cluster.worker.send("done")
            wait_disconnect()
    """,
        env=policy_env("reuseport"),
    ).check()
    socks = r.records("sock")
    assert len(socks) == 2
    assert socks[0]["ino"] != socks[1]["ino"]
    assert socks[0]["port"] == socks[1]["port"]
    assert all(s["reuseport"] == 1 and s["acceptconn"] == 1 for s in socks)


def test_listen_in_primary_is_a_plain_listening_socket(run_primary):
    r = run_primary("""
        s = cluster.listen(port=0, host="127.0.0.1")
        port = s.getsockname()[1]
        c = socket.create_connection(("127.0.0.1", port), timeout=5)
        conn, addr = s.accept()
        conn.sendall(b"hi")
        out("primary_listen", port=port, got=c.recv(10).decode(),
            acceptconn=s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    """).check()
    rec = r.one("primary_listen")
    assert rec["got"] == "hi" and rec["port"] > 0 and rec["acceptconn"] == 1


@pytest.mark.parametrize("policy", POLICIES)
def test_worker_socket_reports_endpoint_family_and_address(run_primary, policy):
    # The returned object stands for the endpoint's listening socket: its family and
    # getsockname are those of the endpoint (as Node's server.address()).
    r = run_primary(
        """
        if cluster.is_primary:
            cluster.fork()
        else:
            s = cluster.listen(port=0, host="127.0.0.1")
            out("sock", family=int(s.family), type=int(s.type), name=list(s.getsockname()),
                is_socket=isinstance(s, socket.socket))
            cluster.worker.disconnect()
    """,
        env=policy_env(policy),
    ).check()
    rec = r.one("sock")
    assert rec["is_socket"] is True
    assert rec["type"] == int(socket.SOCK_STREAM)
    assert rec["name"][0] == "127.0.0.1" and rec["name"][1] > 0
    assert rec["family"] == int(socket.AF_INET)


@pytest.mark.parametrize("policy", POLICIES)
def test_accept_gives_peer_address(start_primary, policy):
    p = start_primary(
        """
        if cluster.is_primary:
            cluster.on("listening", lambda w, a: out("listening", port=a.port))
            cluster.fork()
        else:
            s = cluster.listen(port=0, host="127.0.0.1")
            for _ in range(3):
                conn, addr = s.accept()
                with conn:
                    conn.sendall(f"{addr[0]} {addr[1]} {conn.getsockname()[1]}".encode())
            cluster.worker.disconnect()
    """,
        env=policy_env(policy),
    )
    port = p.wait_for("listening", timeout=15)[0]["port"]
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            host, cport, lport = c.recv(100).decode().split()
            assert (host, int(cport)) == c.getsockname()
            assert int(lport) == port
    assert p.wait(15) == 0, p.output()


@pytest.mark.parametrize("policy", POLICIES)
def test_disconnect_releases_a_worker_blocked_in_accept(start_primary, policy):
    # disconnect "stops accepting on every listener it got from the cluster" and the worker
    # exits 0 once its main code returns: a main thread blocked in accept() must be released.
    p = start_primary(
        """
        if cluster.is_primary:
            cluster.on("listening", lambda w, a: w.disconnect())
            cluster.on("exit", lambda w, c, s: out("exit", code=c, signal=s))
            cluster.fork()
        else:
            s = cluster.listen(port=0, host="127.0.0.1")
            try:
                s.accept()
            except OSError as e:
                out("accept_ended", error=type(e).__name__)
    """,
        env=policy_env(policy),
    )
    assert p.wait(8) == 0, p.output()
    rec = p.records("exit")
    assert len(rec) == 1 and (rec[0]["code"], rec[0]["signal"]) == (0, None), p.output()
    assert len(p.records("accept_ended")) == 1


@pytest.mark.parametrize("policy", ["rr", "none"])
def test_ipv6_only_leaves_ipv4_port_free(run_primary, policy):
    # test-cluster-net-listen-ipv6only-rr / -none: ipv6_only on '::' -> addressType 6, same
    # port for all workers, and the primary can still bind 0.0.0.0 on that port. The port is
    # chosen below the ephemeral range: another test running beside this one could be given
    # the same number for an IPv4 listener of its own.
    if not has_ipv6():
        pytest.skip("no IPv6")
    chosen = quiet_port()
    r = run_primary(
        """
        if cluster.is_primary:
            ports = {}
            def on_listening(w, a):
                ports[w.id] = (a.port, a.address_type)
                if len(ports) == 2:
                    port = ports[1][0]
                    try:
                        with socket.socket() as t:
                            # a connection of an earlier test lingering in TIME_WAIT on this
                            # port must not count; a listener still does
                            t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                            t.bind(("0.0.0.0", port))
                            t.listen()
                        v4 = True
                    except OSError as e:
                        v4 = repr(e)
                    out("result", ports=sorted(ports.values()), v4=v4)
                    cluster.disconnect()
            cluster.on("listening", on_listening)
            cluster.fork(); cluster.fork()
        else:
            s = cluster.listen(port=PORT, host="::", ipv6_only=True)
            wait_disconnect()
    """.replace("PORT", str(chosen)),
        env=policy_env(policy),
    ).check()
    rec = r.one("result")
    (p1, t1), (p2, t2) = rec["ports"]
    assert p1 == p2 == chosen and t1 == t2 == 6
    assert rec["v4"] is True


@pytest.mark.parametrize("policy", POLICIES)
def test_dual_stack_listen_accepts_ipv4(start_primary, policy):
    # test-cluster-net-listen-ipv6only-false: '::' without ipv6_only takes IPv4 too
    if not has_ipv6():
        pytest.skip("no IPv6")
    p = start_primary(SERVING.format(n=2, listen='port=0, host="::"'), env=policy_env(policy))
    listening = p.wait_for("listening", count=2, timeout=15)
    assert {rec["address_type"] for rec in listening} == {6}
    port = listening[0]["port"]
    assert listening[1]["port"] == port
    assert connect_read(port, host="127.0.0.1").strip().isdigit()
    assert connect_read(port, host="::1", family=socket.AF_INET6).strip().isdigit()
    stop(p)


@pytest.mark.parametrize("policy", POLICIES)
def test_respawned_worker_gets_the_same_shared_port(start_primary, policy):
    # The classic respawn: a worker dies, the 'exit' listener forks a replacement, whose
    # listen(0) joins the endpoint the surviving worker still holds.
    p = start_primary(
        """
        if cluster.is_primary:
            cluster.on("listening", lambda w, a: out("listening", id=w.id, port=a.port))
            def on_exit(w, code, sig):
                out("exit", id=w.id, signal=sig)
                if w.id == 1:
                    cluster.fork()
            cluster.on("exit", on_exit)
            cluster.fork(); cluster.fork()
        else:
            s = cluster.listen(port=0, host="127.0.0.1")
            out("worker", id=cluster.worker.id)
            serve_pid(s)
    """,
        env=policy_env(policy),
    )
    first = p.wait_for("listening", count=2, timeout=15)
    port = first[0]["port"]
    pid1 = [rec["pid"] for rec in p.wait_for("worker", count=2) if rec["id"] == 1][0]
    os.kill(pid1, signal.SIGKILL)
    third = p.wait_for(lambda rec: rec.get("tag") == "listening" and rec["id"] == 3, timeout=15)[0]
    assert third["port"] == port
    pid3 = [rec["pid"] for rec in p.wait_for("worker", count=3) if rec["id"] == 3][0]
    seen = {int(connect_read(port)) for _ in range(30)}
    assert pid1 not in seen
    if policy == "rr":
        assert pid3 in seen, "round-robin reaches the replacement"
    stop(p)


@pytest.mark.parametrize("policy", ["rr", "none"])
def test_unix_relative_path_is_resolved_and_removed_when_released(run_primary, tmp_path, policy):
    # test-cluster-net-listen-relative-path: a relative path works from a worker, the address
    # is the absolute path, and the socket file is removed once the endpoint is closed.
    r = run_primary(
        """
        if cluster.is_primary:
            cluster.on("listening", lambda w, a: out("listening", address=a.address,
                                                     address_type=a.address_type))
            n = {"done": 0}
            def on_message(w, m, h):
                n["done"] += 1
                if n["done"] == 2:
                    cluster.disconnect(lambda: out("after", exists=os.path.exists("rel.sock")))
            cluster.on("message", on_message)
            cluster.fork(); cluster.fork()
        else:
            s = cluster.listen(path="rel.sock")
            with socket.socket(socket.AF_UNIX) as c:
                c.connect(os.path.abspath("rel.sock"))
            cluster.worker.send("connected")
            wait_disconnect()
    """,
        env=policy_env(policy),
        cwd=tmp_path,
    ).check()
    recs = r.records("listening")
    assert len(recs) == 2
    for rec in recs:
        assert rec["address_type"] == -1
        assert os.path.realpath(rec["address"]) == os.path.realpath(tmp_path / "rel.sock")
    assert r.one("after")["exists"] is False


@pytest.mark.parametrize("policy", POLICIES + ["exclusive"])
def test_bind_error_errno_reaches_the_worker(run_primary, policy):
    # Bind errors other than EADDRINUSE keep their errno too: an address that is not local
    # (TEST-NET-1) gives EADDRNOTAVAIL in the worker; the primary carries on.
    exclusive = policy == "exclusive"
    r = run_primary(
        f"""
        if cluster.is_primary:
            w = cluster.fork()
            w.on("exit", lambda c, s: out("exit", code=c))
        else:
            try:
                cluster.listen(port=0, host="192.0.2.1", exclusive={exclusive})
            except OSError as e:
                out("error", errno=e.errno)
            else:
                out("no_error")
            cluster.worker.disconnect()
    """,
        env=policy_env("rr" if exclusive else policy),
    ).check()
    assert r.records("no_error") == []
    assert r.one("error")["errno"] == errno.EADDRNOTAVAIL
    assert r.one("exit")["code"] == 0


@pytest.mark.parametrize("method", ["exec", "forkserver"])
def test_udp_reuse_addr_binds_one_port_twice(run_primary, method):
    # test-dgram-reuse: two reuseAddr datagram sockets bind one port; a third without it can't
    r = run_primary(f"""
        if cluster.is_primary:
            cluster.setup_primary(start_method={method!r})
            cluster.fork()
        else:
            a = cluster.listen(port=0, host="127.0.0.1", udp=True, reuse_addr=True)
            port = a.getsockname()[1]
            b = cluster.listen(port=port, host="127.0.0.1", udp=True, reuse_addr=True)
            try:
                cluster.listen(port=port, host="127.0.0.1", udp=True)
                errno_plain = 0
            except OSError as exc:
                errno_plain = exc.errno
            out("bound", ports=[a.getsockname()[1], b.getsockname()[1]], port=port,
                errno_plain=errno_plain)
            a.close()
            b.close()
            cluster.worker.disconnect()
    """).check()
    bound = r.one("bound")
    assert bound["ports"] == [bound["port"], bound["port"]]
    assert bound["errno_plain"] == errno.EADDRINUSE


def test_reuse_addr_is_for_udp():
    from clusterlab import cluster

    with pytest.raises(ValueError, match="udp"):
        cluster.listen(port=0, host="127.0.0.1", reuse_addr=True)
