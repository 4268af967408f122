"""settings['serialization']: "json" (default) and "advanced" (pickle over the private channel)."""

import pytest

pytestmark = pytest.mark.timeout(30)

ECHO_WORKER = """
        else:
            cluster.worker.on("message", lambda m, h: cluster.worker.send(m))
            ready()
            wait_disconnect()
"""


def test_advanced_round_trips_circular_set_bytes_tuple_exception(run_primary):
    # test-cluster-advanced-serialization (circular object), plus Python's extra types
    r = run_primary("""
        if cluster.is_primary:
            cluster.setup_primary(serialization="advanced")
            w = cluster.fork()
            circ = {"name": "root"}
            circ["self"] = circ
            msg = {"circ": circ, "set": {1, 2, 3}, "bytes": b"\\x00\\xff", "tuple": (1, "a"),
                   "exc": ValueError("bad", 7), "frozen": frozenset({"x"}), "int_key": {1: "one"}}
            def on_message(m, h):
                exc = m["exc"]
                out("back",
                    circular=m["circ"]["self"] is m["circ"],
                    set=isinstance(m["set"], set) and m["set"] == {1, 2, 3},
                    bytes=m["bytes"] == b"\\x00\\xff",
                    tuple=type(m["tuple"]) is tuple and m["tuple"] == (1, "a"),
                    exc=type(exc) is ValueError and exc.args == ("bad", 7),
                    frozen=m["frozen"] == frozenset({"x"}),
                    int_key=m["int_key"] == {1: "one"})
                w.disconnect()
            when_ready(w, lambda: (w.send(msg), w.on("message", on_message)))
    """ + ECHO_WORKER).check()
    rec = r.one("back")
    for key in ("circular", "set", "bytes", "tuple", "exc", "frozen", "int_key"):
        assert rec[key] is True, (key, rec)


def test_advanced_worker_sees_the_types_too(run_primary):
    r = run_primary("""
        if cluster.is_primary:
            cluster.setup_primary(serialization="advanced")
            w = cluster.fork()
            a = [1]
            a.append(a)
            when_ready(w, lambda: (w.send({"set": {4}, "loop": a}),
                                   w.on("message", lambda m, h: w.disconnect())))
        else:
            def on_message(m, h):
                out("worker_got", set=isinstance(m["set"], set),
                    loop=m["loop"][1] is m["loop"])
                cluster.worker.send("ok")
            cluster.worker.on("message", on_message)
            ready()
            wait_disconnect()
    """).check()
    rec = r.one("worker_got")
    assert rec["set"] is True and rec["loop"] is True


def test_advanced_unpicklable_message_raises_type_error_and_sends_nothing(run_primary):
    r = run_primary("""
        if cluster.is_primary:
            cluster.setup_primary(serialization="advanced")
            w = cluster.fork()
            def on_online():
                for bad in (threading.Lock(), lambda: 0):
                    try:
                        w.send({"bad": bad})
                    except TypeError:
                        out("raised")
                    except Exception as e:
                        out("wrong_exception", type=type(e).__name__)
                w.send("marker")
            when_ready(w, lambda: (on_online(), w.on("message", lambda m, h: (
                out("first", m=m), w.disconnect()))))
        else:
            cluster.worker.once("message", lambda m, h: cluster.worker.send(m))
            ready()
            wait_disconnect()
    """).check()
    assert r.records("wrong_exception") == [], r.output()
    assert len(r.records("raised")) == 2
    assert r.one("first")["m"] == "marker"


def test_json_rejects_set_with_type_error(run_primary):
    r = run_primary("""
        if cluster.is_primary:
            w = cluster.fork()
            def on_online():
                try:
                    w.send({"s": {1, 2}})
                except TypeError:
                    out("raised")
                w.disconnect()
            when_ready(w, on_online)
        else:
            ready()
            wait_disconnect()
    """).check()
    r.one("raised")


def test_json_is_the_default_and_tuples_arrive_as_lists(run_primary):
    # JSON has no tuple: like Node's JSON serialization, a tuple arrives as an array (list).
    r = run_primary("""
        if cluster.is_primary:
            w = cluster.fork()
            def on_message(m, h):
                out("back", t_type=type(m["t"]).__name__, m=m)
                w.disconnect()
            when_ready(w, lambda: (w.send({"t": (1, 2), "n": None, "f": 1.5, "u": "é"}),
                                   w.on("message", on_message)))
    """ + ECHO_WORKER).check()
    rec = r.one("back")
    assert rec["t_type"] == "list"
    assert rec["m"] == {"t": [1, 2], "n": None, "f": 1.5, "u": "é"}


def test_serialization_is_per_fork_setting(run_primary):
    r = run_primary("""
        if cluster.is_primary:
            w1 = cluster.fork()
            cluster.setup_primary(serialization="advanced")
            w2 = cluster.fork()
            def send_set(w):
                try:
                    w.send({1, 2})
                    out("sent", id=w.id)
                except TypeError:
                    out("raised", id=w.id)
                    w.disconnect()
            when_ready(w1, lambda: send_set(w1))
            when_ready(w2, lambda: (send_set(w2), w2.on("message", lambda m, h: (
                out("echo", m=sorted(m)), w2.disconnect()))))
    """ + ECHO_WORKER).check()
    assert r.one("raised")["id"] == 1
    assert r.one("sent")["id"] == 2
    assert r.one("echo")["m"] == [1, 2]
