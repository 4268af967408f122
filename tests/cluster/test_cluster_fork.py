"""cluster.fork(env): ids, environment, the asynchronous 'fork' event, cluster.workers."""

import pytest

pytestmark = pytest.mark.timeout(30)


def test_fork_gives_ids_from_one_and_never_reuses_them(run_primary):
    r = run_primary("""
        if cluster.is_primary:
            w1 = cluster.fork()
            w2 = cluster.fork()
            out("first", ids=[w1.id, w2.id])
            state = {"exits": 0}
            def on_exit(worker, code, signal):
                state["exits"] += 1
                if state["exits"] == 2:
                    w3 = cluster.fork()  # after 1 and 2 are gone: still 3, never reused
                    out("third", id=w3.id)
            cluster.on("exit", on_exit)
        else:
            out("worker", id=cluster.worker.id)
            cluster.worker.disconnect()
    """).check()
    assert r.one("first")["ids"] == [1, 2]
    assert r.one("third")["id"] == 3
    assert sorted(rec["id"] for rec in r.records("worker")) == [1, 2, 3]


def test_fork_returns_a_worker_instance(run_primary):
    r = run_primary("""
        if cluster.is_primary:
            w = cluster.fork()
            import subprocess
            out("fork", is_worker_class=isinstance(w, cluster.Worker), pid=w.process.pid,
                has_pid=isinstance(w.process.pid, int),
                popen=isinstance(w.process, subprocess.Popen),
                start_method=cluster.settings["start_method"])
        else:
            out("worker_side", is_worker_class=isinstance(cluster.worker, cluster.Worker))
            cluster.worker.disconnect()
    """).check()
    rec = r.one("fork")
    assert rec["is_worker_class"] is True
    assert rec["has_pid"] is True
    # worker.process is the subprocess.Popen (exec), or the fork server's Popen-like child
    assert rec["popen"] is (rec["start_method"] == "exec"), rec
    assert r.one("worker_side")["is_worker_class"] is True
    # worker.process.pid in the primary is the worker's real pid
    assert r.one("worker_side")["pid"] == rec["pid"]


def test_fork_env_is_added_to_worker_environment(run_primary):
    r = run_primary("""
        if cluster.is_primary:
            os.environ["CL_TEST_INHERITED"] = "from-primary"
            os.environ["CL_TEST_OVERRIDDEN"] = "old"
            cluster.fork({"CL_TEST_ADDED": "added", "CL_TEST_OVERRIDDEN": "new"})
        else:
            out("env", added=os.environ.get("CL_TEST_ADDED"),
                inherited=os.environ.get("CL_TEST_INHERITED"),
                overridden=os.environ.get("CL_TEST_OVERRIDDEN"))
            cluster.worker.disconnect()
    """).check()
    rec = r.one("env")
    # test-cluster-fork-env: env adds variables and overrides existing ones.
    assert rec["added"] == "added"
    assert rec["inherited"] == "from-primary"
    assert rec["overridden"] == "new"


def test_fork_env_cannot_override_the_worker_id(run_primary):
    r = run_primary("""
        if cluster.is_primary:
            w = cluster.fork({"CLUSTERLAB_WORKER_ID": "99", "NODE_UNIQUE_ID": "98"})
            out("primary", id=w.id)
        else:
            out("worker", id=cluster.worker.id, is_worker=cluster.is_worker)
            cluster.worker.disconnect()
    """).check()
    assert r.one("primary")["id"] == 1
    rec = r.one("worker")
    assert rec["is_worker"] is True
    assert rec["id"] == 1


def test_fork_event_is_asynchronous_and_carries_the_worker(run_primary):
    r = run_primary("""
        if cluster.is_primary:
            seen = []
            cluster.on("fork", lambda w: seen.append(w))
            w = cluster.fork()
            out("after_call", seen_inside_call=len(seen))
            def on_fork(worker):
                out("fork_event", same=worker is w, count=len(seen))
            cluster.on("fork", on_fork)
            w.on("online", lambda: w.disconnect())
        else:
            wait_disconnect()
    """).check()
    assert r.one("after_call")["seen_inside_call"] == 0, "'fork' must not fire inside fork()"
    rec = r.one("fork_event")
    assert rec["same"] is True
    assert rec["count"] == 1


def test_worker_is_in_workers_as_soon_as_fork_returns(run_primary):
    r = run_primary("""
        if cluster.is_primary:
            w = cluster.fork()
            out("table", present=cluster.workers.get(w.id) is w, keys=sorted(cluster.workers))
            w2 = cluster.fork()
            out("table2", keys=sorted(cluster.workers),
                both=cluster.workers[1] is w and cluster.workers[2] is w2)
        else:
            cluster.worker.disconnect()
    """).check()
    assert r.one("table")["present"] is True
    assert r.one("table")["keys"] == [1]
    assert r.one("table2")["keys"] == [1, 2]
    assert r.one("table2")["both"] is True


def test_fork_raises_in_a_worker(run_primary):
    r = run_primary("""
        if cluster.is_primary:
            cluster.fork()
        else:
            try:
                cluster.fork()
            except Exception as e:
                out("raised", type=type(e).__name__, msg=str(e))
            else:
                out("no_raise")
            cluster.worker.disconnect()
    """).check()
    assert r.records("no_raise") == []
    assert r.one("raised") | {"pid": 0} == {
        "tag": "raised",
        "pid": 0,
        "type": "RuntimeError",
        "msg": "cluster.fork() can only be called in the primary",
    }


def test_fork_emits_setup_every_time(run_primary):
    # Node: fork() calls setupPrimary() first, so 'setup' fires once per fork.
    r = run_primary("""
        if cluster.is_primary:
            cluster.on("setup", lambda s: out("setup", keys=sorted(s)))
            cluster.fork(); cluster.fork()
        else:
            cluster.worker.disconnect()
    """).check()
    assert len(r.records("setup")) == 2
