"""Passing sockets with send(message, handle)."""

import pytest

pytestmark = pytest.mark.timeout(30)


def test_socket_sent_to_worker_and_back_is_usable(run_primary):
    # test-cluster-send-deadlock / test-cluster-net-send: a connection handed primary -> worker
    # -> primary stays usable on both sides.
    r = run_primary("""
        if cluster.is_primary:
            srv = socket.create_server(("127.0.0.1", 0))
            port = srv.getsockname()[1]
            def client():
                with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
                    data = b""
                    while True:
                        b = c.recv(4096)
                        if not b:
                            break
                        data += b
                out("client_got", data=data.decode())
            client_thread = threading.Thread(target=client, daemon=True)
            client_thread.start()
            conn, _ = srv.accept()
            srv.close()
            w = cluster.fork()
            when_ready(w, lambda: w.send("take", conn, lambda err: conn.close()))
            def on_message(worker, m, h):
                if m == READY:
                    return
                out("primary_got", m=m, cls=type(h).__name__,
                    is_socket=isinstance(h, socket.socket))
                h.sendall(b"from-primary\\n")
                h.close()
                client_thread.join(10)
                worker.disconnect()
            cluster.on("message", on_message)
        else:
            def on_message(m, h):
                out("worker_got", m=m, is_socket=isinstance(h, socket.socket))
                h.sendall(b"from-worker\\n")
                cluster.worker.send("back", h, lambda err: h.close())
            cluster.worker.on("message", on_message)
            ready()
            wait_disconnect()
    """).check()
    assert r.one("worker_got")["is_socket"] is True
    assert r.one("worker_got")["m"] == "take"
    rec = r.one("primary_got")
    assert rec["m"] == "back" and rec["is_socket"] is True
    assert r.one("client_got")["data"] == "from-worker\nfrom-primary\n"


def test_unix_socket_handle_from_worker_arrives_as_socket(run_primary):
    r = run_primary("""
        if cluster.is_primary:
            w = cluster.fork()
            def on_message(m, h):
                data = h.recv(100).decode()
                out("got", data=data, is_socket=isinstance(h, socket.socket),
                    family=int(h.family) == int(socket.AF_UNIX))
                h.sendall(b"pong")
                h.close()
            w.on("message", on_message)
            cluster.on("message", lambda worker, m, h: out(
                "cluster_message", is_socket=isinstance(h, socket.socket)))
        else:
            a, b = socket.socketpair()
            b.sendall(b"ping")
            cluster.worker.send({"here": "it is"}, a)
            a.close()
            b.settimeout(10)
            out("reply", data=b.recv(100).decode())
            cluster.worker.disconnect()
    """).check()
    rec = r.one("got")
    assert rec["data"] == "ping" and rec["is_socket"] is True and rec["family"] is True
    assert r.one("reply")["data"] == "pong"
    assert r.one("cluster_message")["is_socket"] is True


def test_same_handle_sent_twice(run_primary):
    # test-cluster-send-handle-twice
    r = run_primary("""
        if cluster.is_primary:
            w = cluster.fork()
            got = []
            def on_message(m, h):
                got.append(h)
                h.sendall(f"via{len(got)}".encode())
                h.close()
                if len(got) == 2:
                    out("both", n=len(got))
            w.on("message", on_message)
        else:
            a, b = socket.socketpair()
            cluster.worker.send("one", a)
            cluster.worker.send("two", a)
            a.close()
            b.settimeout(10)
            data = b""
            while len(data) < 8:
                chunk = b.recv(100)
                if not chunk:
                    break
                data += chunk
            out("reply", data=data.decode())
            cluster.worker.disconnect()
    """).check()
    assert r.one("both")["n"] == 2
    assert r.one("reply")["data"] == "via1via2"


def test_large_message_with_handle(run_primary):
    # test-cluster-send-handle-large-payload
    r = run_primary("""
        if cluster.is_primary:
            w = cluster.fork()
            a, b = socket.socketpair()
            payload = {"blob": "y" * 800_000}
            def on_message(m, h):
                h.sendall(b"ok")
                h.close()
                b.settimeout(10)
                out("back", same=m == payload, data=b.recv(10).decode())
                w.disconnect()
            when_ready(w, lambda: (w.send(payload, a, lambda e: a.close()),
                                   w.on("message", on_message)))
        else:
            cluster.worker.on("message", lambda m, h: cluster.worker.send(m, h,
                                                                         lambda e: h.close()))
            ready()
            wait_disconnect()
    """).check()
    rec = r.one("back")
    assert rec["same"] is True and rec["data"] == "ok"


def test_many_handles_in_a_burst_stay_paired_with_their_messages(run_primary):
    # Descriptors travel beside the frames: a burst of messages, every other one with a
    # socket, must keep each socket with its own message.
    r = run_primary("""
        if cluster.is_primary:
            w = cluster.fork()
            got = []
            def on_message(m, h):
                if m == "end":
                    out("result", n=len(got), ok=all(got))
                    w.disconnect()
                    return
                if m["with_handle"]:
                    data = h.recv(16).decode()
                    h.close()
                    got.append(data == f"s{m['i']}")
                else:
                    got.append(h is None)
            w.on("message", on_message)
        else:
            keep = []
            for i in range(200):
                if i % 2:
                    a, b = socket.socketpair()
                    b.sendall(f"s{i}".encode())
                    cluster.worker.send({"i": i, "with_handle": True}, a)
                    a.close()
                    keep.append(b)
                else:
                    cluster.worker.send({"i": i, "with_handle": False})
            cluster.worker.send("end")
            wait_disconnect()
            for b in keep:
                b.close()
    """).check()
    rec = r.one("result")
    assert rec["n"] == 200 and rec["ok"] is True


def test_a_handle_that_is_not_a_socket_is_refused_before_anything_is_sent(run_primary, tmp_path):
    # Node sends only net handles; a file or a pipe is a TypeError at send(), on either side.
    r = run_primary(f"""
        if cluster.is_primary:
            w = cluster.fork()
            w.on("message", lambda m, h: out("got", m=m, handle=h is not None))
            def on_online():
                try:
                    w.send("file", open({str(tmp_path / "f.txt")!r}, "w"))
                except TypeError as exc:
                    out("primary_refused", msg=str(exc))
            w.on("online", on_online)
        else:
            r, wfd = os.pipe()
            try:
                cluster.worker.send("pipe", os.fdopen(wfd, "w"))
            except TypeError as exc:
                out("worker_refused", msg=str(exc))
            cluster.worker.send("after", callback=lambda err: cluster.worker.disconnect())
    """).check()
    assert "socket" in r.one("primary_refused")["msg"]
    assert "socket" in r.one("worker_refused")["msg"]
    assert [rec["m"] for rec in r.records("got")] == ["after"], (
        "nothing was sent for the refused ones"
    )
