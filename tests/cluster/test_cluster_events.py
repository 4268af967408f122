"""Cluster and Worker events: order, arguments, worker-level before cluster-level, emitter API."""

import pytest

pytestmark = pytest.mark.timeout(30)


def test_event_order_per_worker(run_primary):
    r = run_primary("""
        if cluster.is_primary:
            for ev in ("fork", "online", "listening", "disconnect", "exit"):
                cluster.on(ev, (lambda ev: lambda w, *a: out("ev", id=w.id, ev=ev))(ev))
            cluster.on("listening", lambda w, a: w.disconnect())
            cluster.fork(); cluster.fork()
        else:
            s = cluster.listen(port=0, host="127.0.0.1")
            wait_disconnect()
            s.close()
    """).check()
    for wid in (1, 2):
        seq = [rec["ev"] for rec in r.records("ev") if rec["id"] == wid]
        assert seq[:3] == ["fork", "online", "listening"], seq
        assert sorted(seq[3:]) == ["disconnect", "exit"], seq


def test_one_listening_event_per_listener(run_primary):
    r = run_primary("""
        if cluster.is_primary:
            w = cluster.fork()
            w.on("listening", lambda a: out("listening", port=a.port))
            w.on("message", lambda m, h: w.disconnect())
        else:
            a = cluster.listen(port=0, host="127.0.0.1")
            b = cluster.listen(port=0, host="127.0.0.1")
            c = cluster.listen(port=0, host="127.0.0.1", exclusive=True)
            out("ports", ports=[s.getsockname()[1] for s in (a, b, c)])
            cluster.worker.send("done")
            wait_disconnect()
            for s in (a, b, c):
                s.close()
    """).check()
    ports = r.one("ports")["ports"]
    assert sorted(rec["port"] for rec in r.records("listening")) == sorted(ports)


def test_worker_level_event_fires_before_cluster_level(run_primary):
    r = run_primary("""
        if cluster.is_primary:
            w = cluster.fork()
            for ev in ("online", "listening", "message", "disconnect", "exit"):
                w.on(ev, (lambda ev: lambda *a: out("ev", level="worker", ev=ev))(ev))
                cluster.on(ev, (lambda ev: lambda *a: out("ev", level="cluster", ev=ev))(ev))
            w.on("message", lambda m, h: w.disconnect())
        else:
            s = cluster.listen(port=0, host="127.0.0.1")
            cluster.worker.send("hi")
            wait_disconnect()
            s.close()
    """).check()
    seq = [(rec["ev"], rec["level"]) for rec in r.records("ev")]
    for ev in ("online", "listening", "message", "disconnect", "exit"):
        assert seq.count((ev, "worker")) == 1, seq
        assert seq.count((ev, "cluster")) == 1, seq
        assert seq.index((ev, "worker")) < seq.index((ev, "cluster")), seq
    # nothing else from this worker's events in between: the pair is adjacent
    for ev in ("online", "listening", "message", "disconnect", "exit"):
        assert seq.index((ev, "cluster")) == seq.index((ev, "worker")) + 1, seq


def test_listening_address_has_real_port_for_port_zero(run_primary):
    # test-cluster-basic: {address: '127.0.0.1', port, addressType: 4, fd: undefined};
    # test-cluster-listening-port: the real port for listen(0).
    r = run_primary("""
        if cluster.is_primary:
            w = cluster.fork()
            def on_listening(worker, a):
                try:
                    a.port = 1
                    mutable = True
                except (AttributeError, TypeError):
                    mutable = False
                out("cluster_listening", same=worker is w, address=a.address, port=a.port,
                    address_type=a.address_type, fd=a.fd, mutable=mutable,
                    cls=type(a).__name__)
            w.on("listening", lambda a: out("worker_listening", port=a.port))
            cluster.on("listening", on_listening)
            cluster.on("message", lambda w, m, h: w.disconnect())
        else:
            s = cluster.listen(port=0, host="127.0.0.1")
            out("real", port=s.getsockname()[1])
            cluster.worker.send("x")
            wait_disconnect()
            s.close()
    """).check()
    rec = r.one("cluster_listening")
    real = r.one("real")["port"]
    assert real != 0
    assert rec["same"] is True
    assert rec["address"] == "127.0.0.1"
    assert rec["port"] == real
    assert rec["address_type"] == 4
    assert rec["fd"] is None
    assert rec["cls"] == "Address"
    assert rec["mutable"] is False, "Address is immutable"
    assert r.one("worker_listening")["port"] == real


def test_listener_attached_right_after_fork_sees_online(run_primary):
    r = run_primary("""
        if cluster.is_primary:
            w = cluster.fork()
            w.on("online", lambda: (out("online", id=w.id), w.disconnect()))
        else:
            wait_disconnect()
    """).check()
    assert r.one("online")["id"] == 1


def test_listener_attached_after_busy_main_code_misses_nothing(run_primary):
    # Node runs listeners only when the main script yields: a worker that came online while
    # the primary's main code was busy still has its 'fork' and 'online' delivered to
    # listeners attached afterwards.
    r = run_primary("""
        if cluster.is_primary:
            w = cluster.fork()
            deadline = time.time() + 1.5
            while time.time() < deadline:
                pass
            w.on("online", lambda: (out("online"), w.disconnect()))
            cluster.on("fork", lambda w: out("fork"))
        else:
            wait_disconnect()
    """).check()
    r.one("fork")
    r.one("online")


def test_exit_event_arguments_for_exit_code(run_primary):
    # test-cluster-worker-death: process.exit(42) -> 'exit'(42, null) and cluster 'exit'(worker)
    r = run_primary("""
        if cluster.is_primary:
            w = cluster.fork()
            w.on("exit", lambda code, sig: out("worker_exit", code=code, signal=sig))
            cluster.on("exit", lambda worker, code, sig: out(
                "cluster_exit", same=worker is w, code=code, signal=sig))
        else:
            sys.exit(42)
    """).check()
    rec = r.one("worker_exit")
    assert (rec["code"], rec["signal"]) == (42, None)
    rec = r.one("cluster_exit")
    assert (rec["same"], rec["code"], rec["signal"]) == (True, 42, None)


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGUSR1"])
def test_exit_event_arguments_for_a_signal(run_primary, sig):
    # test-cluster-worker-death, killed: 'exit'(null, signal name) on the worker and the cluster.
    # The worker signals itself, so the name expected is the one the test chose.
    r = run_primary(f"""
        import signal
        if cluster.is_primary:
            w = cluster.fork()
            w.on("exit", lambda code, sig: out("worker_exit", code=code, signal=sig))
            cluster.on("exit", lambda worker, code, sig: out(
                "cluster_exit", same=worker is w, code=code, signal=sig))
        else:
            os.kill(os.getpid(), signal.{sig})
            time.sleep(10)
    """).check()
    rec = r.one("worker_exit")
    assert (rec["code"], rec["signal"]) == (None, sig)
    rec = r.one("cluster_exit")
    assert (rec["same"], rec["code"], rec["signal"]) == (True, None, sig)


def test_message_event_arguments(run_primary):
    r = run_primary("""
        if cluster.is_primary:
            w = cluster.fork()
            w.on("message", lambda m, h: out("worker_message", m=m, handle=h is None))
            def on_message(worker, m, h):
                out("cluster_message", same=worker is w, m=m, handle=h is None)
                worker.disconnect()
            cluster.on("message", on_message)
        else:
            cluster.worker.send({"hello": [1, 2]})
            wait_disconnect()
    """).check()
    assert r.one("worker_message")["m"] == {"hello": [1, 2]}
    assert r.one("worker_message")["handle"] is True
    rec = r.one("cluster_message")
    assert (rec["same"], rec["m"], rec["handle"]) == (True, {"hello": [1, 2]}, True)


def test_all_primary_listeners_run_on_one_thread(run_primary):
    r = run_primary("""
        if cluster.is_primary:
            for ev in ("fork", "online", "listening", "message", "disconnect", "exit"):
                cluster.on(ev, (lambda ev: lambda *a: out("t", ev=ev,
                                                          t=threading.get_ident()))(ev))
            cluster.on("message", lambda w, m, h: w.disconnect())
            for _ in range(3):
                cluster.fork()
        else:
            s = cluster.listen(port=0, host="127.0.0.1")
            cluster.worker.send("x")
            wait_disconnect()
            s.close()
    """).check()
    recs = r.records("t")
    assert len(recs) == 18
    assert len({rec["t"] for rec in recs}) == 1


def test_emitter_api(run_primary):
    r = run_primary("""
        calls = []
        a = lambda *x: calls.append(("a",) + x)
        b = lambda *x: calls.append(("b",) + x)
        c = lambda *x: calls.append(("c",) + x)
        res = {}
        res["chain"] = cluster.on("custom", a).on("custom", b) is cluster
        res["once_chain"] = cluster.once("custom", c) is cluster
        res["count"] = cluster.listener_count("custom")
        res["listeners_ok"] = len(cluster.listeners("custom")) == 3
        res["emit1"] = cluster.emit("custom", 1)
        res["after1"] = list(calls); calls.clear()
        res["emit2"] = cluster.emit("custom", 2)
        res["after2"] = list(calls); calls.clear()
        cluster.off("custom", a)
        cluster.emit("custom", 3)
        res["after_off"] = list(calls); calls.clear()
        cluster.remove_listener("custom", b)
        res["emit_none"] = cluster.emit("custom", 4)
        res["count_none"] = cluster.listener_count("custom")
        cluster.on("x", a); cluster.on("y", b)
        cluster.remove_all_listeners("x")
        res["rm_x"] = [cluster.listener_count("x"), cluster.listener_count("y")]
        cluster.on("x", a)
        cluster.remove_all_listeners()
        res["rm_all"] = [cluster.listener_count("x"), cluster.listener_count("y")]
        # once listener removable by the original function
        cluster.once("z", c); cluster.off("z", c)
        res["once_off"] = cluster.emit("z")
        out("res", **res)
    """).check()
    res = r.one("res")
    assert res["chain"] is True and res["once_chain"] is True
    assert res["count"] == 3 and res["listeners_ok"] is True
    assert res["emit1"] is True
    assert res["after1"] == [["a", 1], ["b", 1], ["c", 1]]
    assert res["emit2"] is True
    assert res["after2"] == [["a", 2], ["b", 2]]
    assert res["after_off"] == [["b", 3]]
    assert res["emit_none"] is False
    assert res["count_none"] == 0
    assert res["rm_x"] == [0, 1]
    assert res["rm_all"] == [0, 0]
    assert res["once_off"] is False


def test_emitter_snapshot_and_removal_semantics(run_primary):
    # Node's EventEmitter: emit() runs the listeners registered when it started (added or
    # removed ones during the emit do not change that run); listeners() unwraps once();
    # removing a function registered twice removes the most recently added instance.
    r = run_primary("""
        calls = []
        def late(*a):
            calls.append("late")
        def b(*a):
            calls.append("b")
        def a(*a_):
            calls.append("a")
            cluster.on("snap", late)
            cluster.off("snap", b)
        cluster.on("snap", a).on("snap", b)
        cluster.emit("snap")
        first = list(calls); calls.clear()
        cluster.emit("snap")
        second = list(calls)
        def f(*x):
            calls.append("f")
        cluster.once("w", f)
        unwrapped = cluster.listeners("w") == [f]
        def g(*x):
            pass
        def h(*x):
            pass
        cluster.on("dup", g).on("dup", h).on("dup", g)
        cluster.off("dup", g)
        order = [fn.__name__ for fn in cluster.listeners("dup")]
        out("res", first=first, second=second, unwrapped=unwrapped, order=order)
    """).check()
    rec = r.one("res")
    assert rec["first"] == ["a", "b"]
    assert rec["second"] == ["a", "late"]
    assert rec["unwrapped"] is True
    assert rec["order"] == ["g", "h"]


def test_emit_error_without_listener_raises(run_primary):
    # Node: emitting 'error' with no listener throws the error
    r = run_primary("""
        try:
            cluster.emit("error", ValueError("unhandled"))
        except ValueError as e:
            out("raised", msg=str(e))
        cluster.on("error", lambda e: out("handled", msg=str(e)))
        out("ret", value=cluster.emit("error", ValueError("handled now")))
    """).check()
    assert r.one("raised")["msg"] == "unhandled"
    assert r.one("handled")["msg"] == "handled now"
    assert r.one("ret")["value"] is True


def test_message_sent_just_before_exit_arrives_before_exit(run_primary):
    r = run_primary("""
        if cluster.is_primary:
            w = cluster.fork()
            w.on("message", lambda m, h: out("message", m=m))
            w.on("exit", lambda c, s: out("exit", code=c))
        else:
            for i in range(50):
                cluster.worker.send(i)
            sys.exit(7)
    """).check()
    assert [rec["m"] for rec in r.records("message")] == list(range(50))
    assert r.tags()[-1] == "exit" and r.one("exit")["code"] == 7


def test_once_listener_that_re_registers_itself_runs_once_per_emit(run_primary):
    # A common pattern (wait for the next event): the handler re-arms itself with once().
    r = run_primary(
        """
        calls = []
        def handler(*a):
            calls.append(a)
            if len(calls) < 100:
                cluster.once("tick", handler)
        cluster.once("tick", handler)
        cluster.emit("tick", 1)
        first = len(calls)
        cluster.emit("tick", 2)
        out("calls", first=first, second=len(calls))
    """,
        timeout=10,
    ).check()
    rec = r.one("calls")
    assert (rec["first"], rec["second"]) == (1, 2)
