"""cluster.scheduling_policy: constants, default, env variable, freezing."""

import pytest

pytestmark = pytest.mark.timeout(30)


def test_policy_constants(run_primary):
    r = run_primary("""
        out("c", none=cluster.SCHED_NONE, rr=cluster.SCHED_RR, reuseport=cluster.SCHED_REUSEPORT)
    """).check()
    rec = r.one("c")
    assert (rec["none"], rec["rr"], rec["reuseport"]) == (1, 2, 3)


def test_default_policy_is_round_robin(run_primary):
    r = run_primary("""
        out("p", policy=cluster.scheduling_policy)
    """).check()
    assert r.one("p")["policy"] == 2


@pytest.mark.parametrize("value,expected", [("rr", 2), ("none", 1), ("reuseport", 3)])
def test_policy_from_environment(run_primary, value, expected):
    r = run_primary(
        """
        out("p", policy=cluster.scheduling_policy)
    """,
        env={"CLUSTERLAB_SCHED_POLICY": value},
    ).check()
    assert r.one("p")["policy"] == expected


def test_policy_assignable_before_first_fork(run_primary):
    r = run_primary("""
        cluster.scheduling_policy = cluster.SCHED_NONE
        out("p", policy=cluster.scheduling_policy)
        cluster.scheduling_policy = cluster.SCHED_REUSEPORT
        out("p", policy=cluster.scheduling_policy)
    """).check()
    assert [rec["policy"] for rec in r.records("p")] == [1, 3]


@pytest.mark.parametrize("freeze", ["setup_primary", "fork"])
def test_policy_frozen_after_first_setup_or_fork(run_primary, freeze):
    r = run_primary(f"""
        if cluster.is_primary:
            cluster.scheduling_policy = cluster.SCHED_NONE
            if {freeze!r} == "fork":
                cluster.fork()
            else:
                cluster.setup_primary()
            try:
                cluster.scheduling_policy = cluster.SCHED_RR
            except Exception as e:
                out("raised", type=type(e).__name__, msg=str(e))
            else:
                out("no_raise")
            out("p", policy=cluster.scheduling_policy)
        else:
            cluster.worker.disconnect()
    """).check()
    assert r.records("no_raise") == [], r.output()
    raised = r.one("raised")
    assert (raised["type"], raised["msg"]) == (
        "RuntimeError",
        "cluster.scheduling_policy is frozen after the first fork() or setup_primary()",
    )
    assert r.one("p")["policy"] == 1


def test_policy_from_environment_governs_listen(run_primary):
    # Under SCHED_NONE every worker accepts on one shared socket; under SCHED_RR the worker's
    # socket is not the primary's bound socket. Observable difference: with NONE the worker's
    # listening socket is bound to the shared port itself (getsockname), and the workers'
    # sockets refer to the same open file description (same inode).
    r = run_primary(
        """
        if cluster.is_primary:
            cluster.fork(); cluster.fork()
            cluster.on("listening", lambda w, a: out("listening", id=w.id, port=a.port))
            n = {"m": 0}
            def on_msg(w, m, h):
                n["m"] += 1
                if n["m"] == 2:
                    cluster.disconnect()
            cluster.on("message", on_msg)
        else:
            s = cluster.listen(port=0, host="127.0.0.1")
            st = os.fstat(s.fileno())
            out("sock", id=cluster.worker.id, ino=st.st_ino, name=list(s.getsockname()),
                policy_env=os.environ.get("CLUSTERLAB_SCHED_POLICY"))
            cluster.worker.send("ready")
            wait_disconnect()
            s.close()
    """,
        env={"CLUSTERLAB_SCHED_POLICY": "none"},
    ).check()
    socks = r.records("sock")
    assert len(socks) == 2
    assert socks[0]["ino"] == socks[1]["ino"], "SCHED_NONE: both workers hold the one socket"


def test_invalid_policy_value_is_rejected(run_primary):
    r = run_primary("""
        try:
            cluster.scheduling_policy = 7
        except (ValueError, TypeError) as e:
            out("raised", type=type(e).__name__)
        out("p", policy=cluster.scheduling_policy)
    """).check()
    r.one("raised")
    assert r.one("p")["policy"] == 2
