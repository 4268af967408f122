"""cluster.workers / cluster.worker, worker.state, is_connected / is_dead."""

import pytest

pytestmark = pytest.mark.timeout(30)


def test_cluster_worker_in_worker_knows_its_id_and_pid(run_primary):
    r = run_primary("""
        if cluster.is_primary:
            ws = [cluster.fork(), cluster.fork()]
            out("primary", pids={w.id: w.process.pid for w in ws})
        else:
            out("worker", id=cluster.worker.id, wpid=cluster.worker.process.pid)
            cluster.worker.disconnect()
    """).check()
    pids = {int(k): v for k, v in r.one("primary")["pids"].items()}
    workers = r.records("worker")
    assert sorted(w["id"] for w in workers) == [1, 2]
    for w in workers:
        assert w["wpid"] == w["pid"] == pids[w["id"]]


def test_worker_leaves_workers_before_the_later_of_disconnect_and_exit(run_primary):
    # doc for cluster.workers: removed after it has disconnected and exited, before the later
    # of the two events is emitted.
    r = run_primary("""
        if cluster.is_primary:
            w = cluster.fork()
            seen = []
            def record(ev):
                def fn(*a):
                    seen.append(ev)
                    out(ev, present=w.id in cluster.workers, n=len(seen))
                return fn
            cluster.on("disconnect", record("disconnect"))
            cluster.on("exit", record("exit"))
        else:
            cluster.worker.disconnect()
    """).check()
    recs = {rec["tag"]: rec for rec in r.records() if rec["tag"] in ("disconnect", "exit")}
    assert set(recs) == {"disconnect", "exit"}
    later = max(recs.values(), key=lambda rec: rec["n"])
    assert later["present"] is False, f"still in cluster.workers at the later event: {recs}"


def test_workers_is_empty_after_all_workers_are_gone(run_primary):
    r = run_primary("""
        if cluster.is_primary:
            for _ in range(3):
                cluster.fork()
            n = {"events": 0}
            def count(*a):
                n["events"] += 1
                if n["events"] == 6:  # 3 x disconnect + 3 x exit: every worker fully gone
                    out("left", keys=sorted(cluster.workers))
            cluster.on("exit", count)
            cluster.on("disconnect", count)
        else:
            cluster.worker.disconnect()
    """).check()
    assert r.one("left")["keys"] == []


def test_worker_state_sequence(run_primary):
    # test-cluster-basic: none -> online -> listening -> ... -> dead
    r = run_primary("""
        if cluster.is_primary:
            w = cluster.fork()
            out("state", at="fork_return", state=w.state)
            cluster.on("fork", lambda w: out("state", at="fork", state=w.state))
            cluster.on("online", lambda w: out("state", at="online", state=w.state))
            cluster.on("listening", lambda w, a: (out("state", at="listening", state=w.state),
                                                  w.disconnect()))
            cluster.on("disconnect", lambda w: out("state", at="disconnect", state=w.state))
            cluster.on("exit", lambda w, c, s: out("state", at="exit", state=w.state))
        else:
            sock = cluster.listen(port=0, host="127.0.0.1")
            wait_disconnect()
            sock.close()
    """).check()
    states = {rec["at"]: rec["state"] for rec in r.records("state")}
    assert states["fork_return"] == "none"
    assert states["fork"] == "none"
    assert states["online"] == "online"
    assert states["listening"] == "listening"
    assert states["exit"] == "dead"
    # the disconnect event sees 'disconnected', or 'dead' when exit came first
    assert states["disconnect"] in ("disconnected", "dead")


def test_is_connected_and_is_dead(run_primary):
    # test-cluster-worker-isconnected, test-cluster-worker-isdead
    r = run_primary("""
        if cluster.is_primary:
            w = cluster.fork()
            out("after_fork", connected=w.is_connected(), dead=w.is_dead())
            when_ready(w, lambda: w.send("go"))
            w.on("disconnect", lambda: out("at_disconnect", connected=w.is_connected()))
            w.on("exit", lambda c, s: out("at_exit", connected=w.is_connected(),
                                            dead=w.is_dead()))
        else:
            out("in_worker", connected=cluster.worker.is_connected(),
                dead=cluster.worker.is_dead())
            ev = threading.Event()
            cluster.worker.on("message", lambda m, h: ev.set())
            ready()
            ev.wait(10)
            cluster.worker.on("disconnect", lambda: out(
                "worker_after_disconnect", connected=cluster.worker.is_connected()))
            cluster.worker.disconnect()
            wait_disconnect()
    """).check()
    assert r.one("after_fork")["connected"] is True
    assert r.one("after_fork")["dead"] is False
    assert r.one("in_worker")["connected"] is True
    assert r.one("in_worker")["dead"] is False
    assert r.one("at_disconnect")["connected"] is False
    assert r.one("at_exit")["connected"] is False
    assert r.one("at_exit")["dead"] is True
    after = r.records("worker_after_disconnect")
    assert len(after) == 1, r.output()
    assert after[0]["connected"] is False
