"""Worker.send both ways: delivery, order, callback, closed channel, unencodable messages,
internal-looking user messages."""

import pytest

pytestmark = pytest.mark.timeout(30)


def test_send_both_ways(run_primary):
    # test-cluster-message / test-cluster-worker-events
    r = run_primary("""
        if cluster.is_primary:
            w = cluster.fork()
            def on_online():
                out("p_send", ret=w.send({"to": "worker", "n": 1}))
            when_ready(w, on_online)
            def on_message(worker, m, h):
                if m != READY:
                    out("p_got", m=m)
                    worker.disconnect()
            cluster.on("message", on_message)
        else:
            def on_message(m, h):
                out("w_got", m=m, handle=h is None)
                out("w_send", ret=cluster.worker.send({"to": "primary", "echo": m}))
            cluster.worker.on("message", on_message)
            ready()
            wait_disconnect()
    """).check()
    assert r.one("p_send")["ret"] is True
    assert r.one("w_got")["m"] == {"to": "worker", "n": 1}
    assert r.one("w_got")["handle"] is True
    assert r.one("w_send")["ret"] is True
    assert r.one("p_got")["m"] == {"to": "primary", "echo": {"to": "worker", "n": 1}}


def test_worker_receives_message_sent_right_after_online(run_primary):
    # test-cluster-worker-init: a message sent in the primary's 'online' listener reaches a
    # 'message' listener that the worker's main code attaches at start-up.
    r = run_primary(
        """
        if cluster.is_primary:
            w = cluster.fork()
            w.on("online", lambda: w.send("early bird"))
            w.on("message", lambda m, h: (out("echo", m=m), w.disconnect()))
        else:
            # start-up work before the listener is attached: Node delivers messages only once
            # the main script yields, so nothing sent meanwhile is lost
            time.sleep(0.3)
            cluster.worker.on("message", lambda m, h: cluster.worker.send(m))
            wait_disconnect(8)
    """,
        timeout=15,
    ).check()
    assert r.one("echo")["m"] == "early bird"


def test_messages_keep_their_order(run_primary):
    r = run_primary("""
        if cluster.is_primary:
            w = cluster.fork()
            got = []
            def on_message(m, h):
                got.append(m)
                if len(got) == 500:
                    out("order", ok=got == list(range(500)))
                    w.send("stop")
            when_ready(w, lambda: (w.on("message", on_message), [w.send(i) for i in range(500)]))
        else:
            got = []
            def on_message(m, h):
                if m == "stop":
                    cluster.worker.disconnect()
                    return
                got.append(m)
                if len(got) == 500:
                    out("w_order", ok=got == list(range(500)))
                    for i in range(500):
                        cluster.worker.send(i)
            cluster.worker.on("message", on_message)
            ready()
            wait_disconnect()
    """).check()
    assert r.one("w_order")["ok"] is True
    assert r.one("order")["ok"] is True


def test_large_message_round_trip(run_primary):
    # test-cluster-send-handle-large-payload (payload part): ~800 KB
    r = run_primary("""
        if cluster.is_primary:
            w = cluster.fork()
            big = {"data": "x" * 800_000, "n": list(range(1000))}
            def on_message(m, h):
                out("back", same=m == big)
                w.disconnect()
            when_ready(w, lambda: (w.send(big), w.on("message", on_message)))
        else:
            cluster.worker.on("message", lambda m, h: cluster.worker.send(m))
            ready()
            wait_disconnect()
    """).check()
    assert r.one("back")["same"] is True


def test_send_callback_gets_none_once_written(run_primary):
    r = run_primary("""
        if cluster.is_primary:
            w = cluster.fork()
            def cb(err):
                out("p_cb", err=err, thread=threading.get_ident() == main_listener_thread[0])
            main_listener_thread = []
            def on_online():
                main_listener_thread.append(threading.get_ident())
                w.send("hello", None, cb)
            when_ready(w, lambda: (on_online(), w.on("message", lambda m, h: w.disconnect())))
        else:
            def wcb(err):
                out("w_cb", err=err)
            def on_message(m, h):
                cluster.worker.send("reply", callback=wcb)
            cluster.worker.on("message", on_message)
            ready()
            wait_disconnect()
    """).check()
    p_cb = r.one("p_cb")
    assert p_cb["err"] is None
    assert p_cb["thread"] is True, "primary callbacks run on the listener thread"
    assert r.one("w_cb")["err"] is None


def test_send_after_exit_returns_false_and_callback_gets_error(run_primary):
    r = run_primary("""
        if cluster.is_primary:
            w = cluster.fork()
            errs = []
            def on_exit(code, sig):
                ret = w.send("too late", callback=errs.append)
                out("closed_send", ret=ret)
                # report from a later event, when the callback has surely had its turn
                w2 = cluster.fork()
                w2.on("online", lambda: (out("cb", n=len(errs), is_exc=bool(errs) and
                                             isinstance(errs[0], BaseException)),
                                         w2.disconnect()))
            w.on("exit", on_exit)
        else:
            if cluster.worker.id == 1:
                cluster.worker.disconnect()
            else:
                wait_disconnect()
    """).check()
    assert r.one("closed_send")["ret"] is False
    rec = r.one("cb")
    assert rec["n"] == 1, "the callback gets the error exactly once"
    assert rec["is_exc"] is True


def test_worker_send_after_disconnect_returns_false(run_primary):
    r = run_primary("""
        if cluster.is_primary:
            cluster.fork()
        else:
            cluster.worker.disconnect()
            wait_disconnect()
            errs = []
            ret = cluster.worker.send("late", callback=errs.append)
            deadline = time.time() + 3
            while not errs and time.time() < deadline:
                time.sleep(0.01)
            out("late", ret=ret, n=len(errs),
                is_exc=bool(errs) and isinstance(errs[0], BaseException))
    """).check()
    rec = r.one("late")
    assert rec["ret"] is False
    assert rec["n"] == 1 and rec["is_exc"] is True


@pytest.mark.parametrize("bad", ["object()", "{1, 2}", "b'bytes'", "{'f': lambda: 0}"])
def test_unencodable_json_message_raises_type_error_and_sends_nothing(run_primary, bad):
    r = run_primary(f"""
        if cluster.is_primary:
            w = cluster.fork()
            def on_online():
                try:
                    w.send({bad})
                except TypeError:
                    out("raised")
                w.send("marker")
            when_ready(w, lambda: (on_online(), w.on("message", lambda m, h: (
                out("first", m=m), w.disconnect()))))
        else:
            cluster.worker.once("message", lambda m, h: cluster.worker.send(repr(m)))
            ready()
            wait_disconnect()
    """).check()
    r.one("raised")
    assert r.one("first")["m"] == "'marker'", "nothing may be sent for an unencodable message"


def test_unencodable_message_from_worker_raises_type_error(run_primary):
    r = run_primary("""
        if cluster.is_primary:
            w = cluster.fork()
            w.on("message", lambda m, h: (out("first", m=m), w.disconnect()))
        else:
            try:
                cluster.worker.send({1, 2, 3})
            except TypeError:
                out("raised")
            cluster.worker.send("marker")
            wait_disconnect()
    """).check()
    r.one("raised")
    assert r.one("first")["m"] == "marker"


INTERNAL_LOOKALIKES = [
    {"cmd": "NODE_CLUSTER", "act": "disconnect"},
    {"cmd": "NODE_CLUSTER", "ack": -1},
    {"cmd": "NODE_CLUSTER", "act": "newconn", "key": "x"},
    {"act": "disconnect"},
    {"act": "exitedAfterDisconnect"},
    {"cmd": "CLUSTERLAB", "act": "disconnect"},
    {"internal": True, "act": "disconnect", "kind": 1},
    {"type": "disconnect"},
    {"op": "disconnect"},
    {"__clusterlab__": True, "act": "disconnect"},
]


def test_internal_looking_user_messages_are_plain_user_messages(run_primary):
    # test-cluster-invalid-message: {cmd: 'NODE_CLUSTER', ack: -1} from user code is harmless.
    r = run_primary(f"""
        LOOKALIKES = {INTERNAL_LOOKALIKES!r}
        if cluster.is_primary:
            w = cluster.fork()
            got = []
            def on_online():
                for m in LOOKALIKES:
                    w.send(m)
                w.send("end")
            def on_message(m, h):
                if m == READY:
                    on_online()
                    return
                got.append(m)
                if m == "end":
                    out("primary_got", msgs=got[:-1], state=w.state,
                        connected=w.is_connected(), flag=w.exited_after_disconnect)
                    w.send("bye")
            w.on("message", on_message)
        else:
            got = []
            def on_message(m, h):
                if m == "bye":
                    cluster.worker.disconnect()
                    return
                got.append(m)
                if m == "end":
                    out("worker_got", msgs=got[:-1], connected=cluster.worker.is_connected())
                    for m2 in LOOKALIKES:
                        cluster.worker.send(m2)
                    cluster.worker.send("end")
            cluster.worker.on("message", on_message)
            ready()
            wait_disconnect()
    """).check()
    assert r.one("worker_got")["msgs"] == INTERNAL_LOOKALIKES
    assert r.one("worker_got")["connected"] is True
    rec = r.one("primary_got")
    assert rec["msgs"] == INTERNAL_LOOKALIKES
    assert rec["state"] == "online"
    assert rec["connected"] is True
    assert rec["flag"] is None
