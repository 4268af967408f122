"""Choosing a scheduler (names, classes, instances, "module:Name", the env variable) and what a
failing scheduler costs: no connection, one 'error' per exception type, the primary lives on."""

import socket
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(30)

BUILTIN = ["rr", "least-conn", "p2c", "jiq", "hash", "hash-bounded", "weighted", "random"]


def pid_of(port: int, timeout: float = 10.0) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as c:
        data = b""
        while True:
            b = c.recv(4096)
            if not b:
                return int(data.decode())
            data += b


@pytest.mark.parametrize("name", BUILTIN[1:])
def test_scheduler_names_from_environment(run_primary, name):
    r = run_primary(
        'out("p", policy=cluster.scheduling_policy)',
        env={"CLUSTERLAB_SCHED_POLICY": name},
    ).check()
    assert r.one("p")["policy"] == name


def test_unknown_environment_value_warns_and_is_ignored(start_primary):
    p = start_primary(
        'out("p", policy=cluster.scheduling_policy)',
        env={"CLUSTERLAB_SCHED_POLICY": "fastest"},
    )
    assert p.wait(20) == 0, p.output()
    assert [rec["policy"] for rec in p.records("p")] == [2]
    assert "ignoring CLUSTERLAB_SCHED_POLICY='fastest'" in p.stderr
    assert "least-conn" in p.stderr  # the warning lists the valid names


API = """
from clusterlab.cluster import Scheduler

class Last(Scheduler):
    name = "last"
    def pick(self, workers, client):
        return workers[-1]

def attempt(label, fn):
    try:
        fn()
    except Exception as e:
        out("raised", label=label, type=type(e).__name__, msg=str(e))
    else:
        out("ok", label=label, policy=cluster.scheduling_policy)

attempt("unknown", lambda: cluster.setup_primary(scheduler="fastest"))
attempt("no-module", lambda: cluster.setup_primary(scheduler="no_such_module_xyz:Policy"))
attempt("no-attr", lambda: cluster.setup_primary(scheduler="json:NoSuchPolicy"))
attempt("not-a-scheduler", lambda: cluster.setup_primary(scheduler="json:dumps"))
attempt("bad-type", lambda: cluster.setup_primary(scheduler=3.5))
attempt("name", lambda: cluster.setup_primary(scheduler="p2c"))
attempt("class", lambda: cluster.setup_primary(scheduler=Last))
attempt("instance", lambda: cluster.setup_primary(scheduler=Last()))
attempt("rr", lambda: cluster.setup_primary(scheduler="rr"))
attempt("none", lambda: cluster.setup_primary(scheduler="none"))
attempt("weight", lambda: cluster.fork(weight=0))
attempt("bounded", lambda: cluster.setup_primary(scheduler=cluster.RendezvousHash(balance=1.5)))
attempt("balance-low", lambda: cluster.RendezvousHash(balance=1))
attempt("balance-type", lambda: cluster.RendezvousHash(balance="2"))
"""


def test_setup_primary_scheduler_accepts_names_classes_instances_and_refuses_others(run_primary):
    r = run_primary(API).check()
    raised = {rec["label"]: rec for rec in r.records("raised")}
    ok = {rec["label"]: rec["policy"] for rec in r.records("ok")}
    assert raised["unknown"]["type"] == "ValueError"
    assert all(name in raised["unknown"]["msg"] for name in BUILTIN), raised["unknown"]
    assert raised["no-module"]["type"] in ("ImportError", "ModuleNotFoundError")
    assert "no_such_module_xyz:Policy" in raised["no-module"]["msg"]
    assert "json:NoSuchPolicy" in raised["no-attr"]["msg"]
    assert raised["not-a-scheduler"]["type"] == "TypeError"
    assert raised["bad-type"]["type"] == "TypeError"
    assert raised["weight"]["type"] == "ValueError"
    assert (
        raised["balance-low"]["type"] == "ValueError" and "above 1" in raised["balance-low"]["msg"]
    )
    assert raised["balance-type"]["type"] == "TypeError"
    assert ok == {
        "name": "p2c",
        "class": "last",
        "instance": "last",
        "rr": 2,
        "none": 1,
        "bounded": "hash",
    }


def test_scheduling_policy_property_takes_names_until_frozen(run_primary):
    r = run_primary("""
        if cluster.is_primary:
            cluster.scheduling_policy = "least-conn"
            out("p", policy=cluster.scheduling_policy)
            cluster.scheduling_policy = cluster.SCHED_RR
            out("p", policy=cluster.scheduling_policy)
            cluster.setup_primary(scheduler="jiq")
            out("p", policy=cluster.scheduling_policy)
            cluster.fork()
            try:
                cluster.setup_primary(scheduler="random")
            except RuntimeError as e:
                out("frozen", msg=str(e))
            out("p", policy=cluster.scheduling_policy)
        else:
            cluster.worker.disconnect()
    """).check()
    assert [rec["policy"] for rec in r.records("p")] == ["least-conn", 2, "jiq", "jiq"]
    assert "frozen" in r.one("frozen")["msg"]


def test_serve_refuses_an_unknown_policy_in_one_line():
    res = subprocess.run(
        [sys.executable, "-m", "clusterlab", "serve", "--policy", "fastest", "--workers", "1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 2, res
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "least-conn" in lines[0] and "'fastest'" in lines[0], res.stderr


# A worker answers each connection with its pid; the primary counts answers per worker.
SERVING = """
def serve(sock):
    sock.settimeout(0.1)
    while sock.fileno() >= 0:
        try:
            conn, _ = sock.accept()
        except TimeoutError:
            continue
        except OSError:
            return
        with conn:
            conn.sendall(str(os.getpid()).encode())

def pid_of(port):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        data = b""
        while True:
            b = c.recv(4096)
            if not b:
                return int(data.decode())
            data += b

def off_loop(clients, then):
    # clients() on a thread (the primary's loop keeps handing off), then(result) and a
    # disconnect on the loop.
    import asyncio
    loop = asyncio.get_running_loop()
    def run():
        result = clients()
        loop.call_soon_threadsafe(lambda: (then(result), cluster.disconnect()))
    threading.Thread(target=run, daemon=True).start()
"""

USER_POLICY = """
from clusterlab.cluster import Scheduler

class LowestId(Scheduler):
    name = "lowest-id"
    def pick(self, workers, client):
        return min(workers, key=lambda w: w.id)
"""


@pytest.mark.parametrize("form", ["class", "instance", "module"])
def test_user_scheduler_as_class_instance_or_module_name(run_primary, tmp_path, form):
    (tmp_path / "lowest_policy.py").write_text(USER_POLICY)
    given = {
        "class": "lowest_policy.LowestId",
        "instance": "lowest_policy.LowestId()",
        "module": "'lowest_policy:LowestId'",
    }[form]
    r = run_primary(
        SERVING
        + f"""
import lowest_policy
if cluster.is_primary:
    cluster.setup_primary(scheduler={given})
    out("p", policy=cluster.scheduling_policy)
    pids = {{}}
    def on_listening(w, a):
        pids[w.id] = w.process.pid
        if len(pids) == 3:
            off_loop(lambda: [pid_of(a.port) for _ in range(12)],
                     lambda got: out("got", pids=got, first=pids[1]))
    cluster.on("listening", on_listening)
    for _ in range(3):
        cluster.fork()
else:
    s = cluster.listen(0, "127.0.0.1")
    threading.Thread(target=serve, args=(s,), daemon=True).start()
    wait_disconnect()
    s.close()
"""
    ).check()
    assert r.one("p")["policy"] == "lowest-id"
    got = r.one("got")
    assert got["pids"] == [got["first"]] * 12


FAILING = """
from clusterlab.cluster import Scheduler

class Failing(Scheduler):
    name = "failing"
    def __init__(self):
        if MODE == "init":
            raise RuntimeError("cannot start")
        self.first = None
    def join(self, worker):
        if worker.id == 1:
            self.first = worker
    def pick(self, workers, client):
        if MODE == "raise":
            raise KeyError("no idea")
        if MODE == "junk":
            return "worker one, please"
        return self.first  # "gone": worker 1 has left the endpoint
"""


@pytest.mark.parametrize(
    "mode,error,count",
    [
        ("raise", "KeyError", 10),
        ("junk", "SchedulerError", 10),
        ("gone", "SchedulerError", 10),
        ("init", "SchedulerError", 0),  # the class cannot be made: Node's round robin instead
    ],
)
def test_failing_scheduler_loses_no_connection_and_reports_once(run_primary, mode, error, count):
    r = run_primary(
        SERVING
        + FAILING
        + f"""
MODE = {mode!r}
if cluster.is_primary:
    cluster.setup_primary(scheduler=Failing)
    cluster.on("error", lambda e: out("error", type=type(e).__name__, msg=str(e)))
    ports = {{}}
    def clients(port):
        off_loop(lambda: [pid_of(port) for _ in range(10)],
                 lambda got: out("got", pids=got, stats=cluster.round_robin_stats()))
    def on_listening(w, a):
        ports[w.id] = a.port
        if len(ports) == 2:
            if MODE == "gone":
                cluster.workers[1].disconnect()
                cluster.workers[1].on("exit", lambda *_: clients(a.port))
            else:
                clients(a.port)
    cluster.on("listening", on_listening)
    cluster.fork(); cluster.fork()
else:
    s = cluster.listen(0, "127.0.0.1")
    threading.Thread(target=serve, args=(s,), daemon=True).start()
    wait_disconnect()
    s.close()
"""
    ).check()
    got = r.one("got")
    assert len(got["pids"]) == 10 and all(got["pids"]), got
    errors = r.records("error")
    assert [e["type"] for e in errors] == [error], r.output()
    stats = got["stats"]
    assert stats["policy_errors"] == count and stats["dropped"] == 0, stats
    assert stats["accepted"] == 10 and stats["handed"] == 10, stats


@pytest.mark.parametrize("policy", ["rr", "least-conn"])
def test_round_robin_stats_keep_counting_closed_handles(run_primary, policy):
    r = run_primary(
        SERVING
        + f"""
import asyncio
if cluster.is_primary:
    cluster.setup_primary(scheduler={policy!r})
    def on_listening(w, a):
        loop = asyncio.get_running_loop()
        def clients():
            pids = [pid_of(a.port) for _ in range(3)]
            loop.call_soon_threadsafe(lambda: (out("live", rr=cluster.round_robin_stats()),
                                               w.send("close")))
        threading.Thread(target=clients, daemon=True).start()
    def on_message(w, m, h):
        if m == "closed":  # its listener's close reached the primary first (one channel)
            out("retired", rr=cluster.round_robin_stats(), handles=len(cluster._primary.handles.handles))
            cluster.disconnect()
    cluster.on("listening", on_listening)
    cluster.on("message", on_message)
    cluster.fork()
else:
    s = cluster.listen(0, "127.0.0.1")
    threading.Thread(target=serve, args=(s,), daemon=True).start()
    def on_message(m, h):
        if m == "close":
            s.close()
            cluster.worker.send("closed")
    cluster.worker.on("message", on_message)
    wait_disconnect()
"""
    ).check()
    live, retired = r.one("live")["rr"], r.one("retired")
    assert live["accepted"] == live["handed"] == 3, live
    assert retired["handles"] == 0, retired
    assert retired["rr"]["accepted"] == retired["rr"]["handed"] == 3, retired
