"""settings['serialization']: "json" (default) and "advanced" (pickle over the private channel)."""

import pickle

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.timeout(60)

JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(
            st.text(st.characters(blacklist_categories=("Cs",)), max_size=8), children, max_size=5
        )
    ),
    max_leaves=20,
)
ADVANCED_LEAVES = (
    JSON_LEAVES
    | st.binary(max_size=20)
    | st.integers()
    | st.frozensets(st.integers(), max_size=4)
    | st.complex_numbers(allow_nan=False)
)
ADVANCED_VALUES = st.recursive(
    ADVANCED_LEAVES,
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.sets(st.integers() | st.text(max_size=5), max_size=4)
        | st.dictionaries(st.integers() | st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=15,
)

ROUND_TRIP = """
        import pickle
        if cluster.is_primary:
            cluster.setup_primary(serialization={serialization!r})
            with open({path!r}, "rb") as f:
                values = pickle.load(f)
            w = cluster.fork()
            back = []
            def on_message(m, h):
                back.append(m)
                if len(back) == len(values):
                    bad = [(v, b) for v, b in zip(values, back) if not (v == b and type(v) is type(b))]
                    out("result", n=len(back), bad=repr(bad[:3]), n_bad=len(bad))
                    w.disconnect()
            when_ready(w, lambda: (w.on("message", on_message), [w.send(v) for v in values]))
        else:
            cluster.worker.on("message", lambda m, h: cluster.worker.send(m))
            ready()
            wait_disconnect()
"""

ECHO_WORKER = """
        else:
            cluster.worker.on("message", lambda m, h: cluster.worker.send(m))
            ready()
            wait_disconnect()
"""


def test_advanced_round_trips_circular_set_bytes_tuple_exception(run_primary):
    # test-cluster-advanced-serialization (circular object), plus Python's extra types
    r = run_primary(
        """
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
    """
        + ECHO_WORKER
    ).check()
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
    r = run_primary(
        """
        if cluster.is_primary:
            w = cluster.fork()
            def on_message(m, h):
                out("back", t_type=type(m["t"]).__name__, m=m)
                w.disconnect()
            when_ready(w, lambda: (w.send({"t": (1, 2), "n": None, "f": 1.5, "u": "é"}),
                                   w.on("message", on_message)))
    """
        + ECHO_WORKER
    ).check()
    rec = r.one("back")
    assert rec["t_type"] == "list"
    assert rec["m"] == {"t": [1, 2], "n": None, "f": 1.5, "u": "é"}


def test_serialization_is_per_fork_setting(run_primary):
    r = run_primary(
        """
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
    """
        + ECHO_WORKER
    ).check()
    assert r.one("raised")["id"] == 1
    assert r.one("sent")["id"] == 2
    assert r.one("echo")["m"] == [1, 2]


@settings(
    max_examples=4,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(values=st.lists(JSON_VALUES, min_size=1, max_size=60))
def test_json_round_trip_of_arbitrary_json_values(run_primary, tmp_path, values):
    path = tmp_path / "values.pickle"
    path.write_bytes(pickle.dumps(values))
    r = run_primary(ROUND_TRIP.format(serialization="json", path=str(path))).check()
    rec = r.one("result")
    assert rec["n"] == len(values)
    assert rec["n_bad"] == 0, rec["bad"]


@settings(
    max_examples=4,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(values=st.lists(ADVANCED_VALUES, min_size=1, max_size=60))
def test_advanced_round_trip_of_arbitrary_picklable_values(run_primary, tmp_path, values):
    path = tmp_path / "values.pickle"
    path.write_bytes(pickle.dumps(values))
    r = run_primary(ROUND_TRIP.format(serialization="advanced", path=str(path))).check()
    rec = r.one("result")
    assert rec["n"] == len(values)
    assert rec["n_bad"] == 0, rec["bad"]
