"""kill / destroy / disconnect on both sides, exited_after_disconnect, cluster.disconnect(cb)."""

import textwrap

import pytest

pytestmark = pytest.mark.timeout(30)

# Primary-side recorder used by most tests below: one line per worker event with the flag.
RECORD = """
def record(w):
    w.on("online", lambda: out("ev", ev="online", flag=w.exited_after_disconnect,
                               state=w.state))
    w.on("disconnect", lambda: out("ev", ev="disconnect", flag=w.exited_after_disconnect,
                                   state=w.state, connected=w.is_connected()))
    w.on("exit", lambda c, s: out("ev", ev="exit", flag=w.exited_after_disconnect,
                                  code=c, signal=s, state=w.state, dead=w.is_dead()))
    return w
"""
RECORD = textwrap.indent(RECORD, " " * 8)  # same indentation as the sources it prefixes


def _events(r):
    return {rec["ev"]: rec for rec in r.records("ev")}


def _assert_once_each(r):
    evs = [rec["ev"] for rec in r.records("ev")]
    assert evs.count("disconnect") == 1, evs
    assert evs.count("exit") == 1, evs


def test_kill_from_primary_signals_now_flag_false(run_primary):
    # test-cluster-worker-kill-signal: worker.kill('SIGKILL') in the primary
    r = run_primary(
        RECORD
        + """
        if cluster.is_primary:
            w = record(cluster.fork())
            w.on("listening", lambda a: w.kill("SIGKILL"))
        else:
            s = cluster.listen(port=0, host="127.0.0.1")
            while True:
                time.sleep(1)
    """
    ).check()
    _assert_once_each(r)
    ev = _events(r)
    assert ev["online"]["flag"] is None
    assert ev["exit"]["code"] is None
    assert ev["exit"]["signal"] == "SIGKILL"
    assert ev["exit"]["flag"] is False
    assert ev["disconnect"]["flag"] is False
    assert ev["exit"]["state"] == "dead"
    assert ev["exit"]["dead"] is True
    assert ev["disconnect"]["connected"] is False


def test_kill_default_signal_is_sigterm_even_in_a_busy_worker(run_primary):
    # test-cluster-kill-infinite-loop: kill() ends a worker stuck in a loop: exit(null,'SIGTERM')
    r = run_primary(
        RECORD
        + """
        if cluster.is_primary:
            w = record(cluster.fork())
            w.on("message", lambda m, h: w.kill())
        else:
            cluster.worker.send("spinning")
            while True:
                pass
    """
    ).check()
    ev = _events(r)
    assert (ev["exit"]["code"], ev["exit"]["signal"]) == (None, "SIGTERM")
    assert ev["exit"]["flag"] is False


def test_destroy_is_kill_in_the_primary(run_primary):
    r = run_primary(
        RECORD
        + """
        if cluster.is_primary:
            w = record(cluster.fork())
            w.on("online", lambda: w.destroy("SIGKILL"))
        else:
            while True:
                time.sleep(1)
    """
    ).check()
    ev = _events(r)
    assert (ev["exit"]["code"], ev["exit"]["signal"], ev["exit"]["flag"]) == (
        None,
        "SIGKILL",
        False,
    )


@pytest.mark.parametrize("method", ["disconnect", "kill", "destroy"])
def test_worker_side_disconnect_or_kill_sets_flag_true_and_exits_zero(run_primary, method):
    # test-cluster-kill-disconnect / test-cluster-worker-destroy: flag true at both events
    r = run_primary(
        RECORD
        + f"""
        if cluster.is_primary:
            record(cluster.fork())
        else:
            s = cluster.listen(port=0, host="127.0.0.1")
            # the worker's own 'disconnect' listener runs whether or not its main code goes on
            cluster.worker.on("disconnect", lambda: out(
                "worker_flag", flag=cluster.worker.exited_after_disconnect))
            cluster.worker.{method}()
            wait_disconnect()
    """
    ).check()
    _assert_once_each(r)
    ev = _events(r)
    assert ev["disconnect"]["flag"] is True
    assert ev["exit"]["flag"] is True
    assert (ev["exit"]["code"], ev["exit"]["signal"]) == (0, None)
    assert r.one("worker_flag")["flag"] is True


def test_worker_kill_ignores_signal_argument(run_primary):
    # Node: in a worker, destroy()/kill() ignores the signal and exits 0 after disconnecting.
    r = run_primary(
        RECORD
        + """
        if cluster.is_primary:
            record(cluster.fork())
        else:
            cluster.worker.kill("SIGKILL")
            wait_disconnect()
    """
    ).check()
    ev = _events(r)
    assert (ev["exit"]["code"], ev["exit"]["signal"], ev["exit"]["flag"]) == (0, None, True)


def test_destroy_after_disconnect_inside_worker(run_primary):
    # test-cluster-worker-destroy, second case: destroy() after the worker disconnected
    r = run_primary(
        RECORD
        + """
        if cluster.is_primary:
            record(cluster.fork())
        else:
            cluster.worker.disconnect()
            wait_disconnect()
            cluster.worker.destroy()
            time.sleep(5)
            out("still_running")
    """
    ).check()
    assert r.records("still_running") == []
    ev = _events(r)
    assert (ev["exit"]["code"], ev["exit"]["signal"]) == (0, None)
    _assert_once_each(r)


def test_primary_disconnect_sets_flag_and_worker_sees_disconnect(run_primary):
    # test-cluster-worker-disconnect / test-cluster-worker-init (returns the worker)
    r = run_primary(
        RECORD
        + """
        if cluster.is_primary:
            w = record(cluster.fork())
            w.on("listening", lambda a: out("ret", same=w.disconnect() is w))
        else:
            s = cluster.listen(port=0, host="127.0.0.1")
            cluster.worker.on("disconnect", lambda: out("worker_disconnect",
                                                        flag=cluster.worker.exited_after_disconnect))
            wait_disconnect()
            s.close()
    """
    ).check()
    assert r.one("ret")["same"] is True
    r.one("worker_disconnect")
    _assert_once_each(r)
    ev = _events(r)
    assert ev["disconnect"]["flag"] is True
    assert ev["exit"]["flag"] is True
    assert (ev["exit"]["code"], ev["exit"]["signal"]) == (0, None)
    assert ev["disconnect"]["state"] in ("disconnected", "dead")


def test_worker_exit_by_itself_flag_false(run_primary):
    # test-cluster-worker-exit: process.exit(42) -> one disconnect + one exit, flag false
    r = run_primary(
        RECORD
        + """
        if cluster.is_primary:
            record(cluster.fork())
            cluster.on("exit", lambda w, c, s: out("cluster_exit", code=c))
            cluster.on("disconnect", lambda w: out("cluster_disconnect"))
        else:
            s = cluster.listen(port=0, host="127.0.0.1")
            sys.exit(42)
    """
    ).check()
    _assert_once_each(r)
    ev = _events(r)
    assert ev["online"]["flag"] is None
    assert ev["disconnect"]["flag"] is False
    assert ev["exit"]["flag"] is False
    assert (ev["exit"]["code"], ev["exit"]["signal"]) == (42, None)
    assert r.one("cluster_exit")["code"] == 42
    r.one("cluster_disconnect")


def test_destroy_in_primary_disconnect_handler_is_harmless(run_primary):
    # test-cluster-call-and-destroy
    r = run_primary(
        RECORD
        + """
        if cluster.is_primary:
            w = record(cluster.fork())
            def on_disconnect():
                out("in_disconnect", connected=w.is_connected())
                w.destroy()
            w.on("disconnect", on_disconnect)
            w.on("online", lambda: w.disconnect())
        else:
            wait_disconnect()
    """
    ).check()
    assert r.one("in_disconnect")["connected"] is False
    assert r.records("ev")[-1]["ev"] in ("exit", "disconnect")
    assert "exit" in _events(r)


def test_concurrent_disconnect_and_destroy(run_primary):
    # test-cluster-concurrent-disconnect: half disconnect(), half destroy() themselves; all (0, None)
    r = run_primary("""
        if cluster.is_primary:
            for _ in range(4):
                cluster.fork()
            cluster.on("exit", lambda w, c, s: out("exit", id=w.id, code=c, signal=s))
            cluster.on("disconnect", lambda w: [x.disconnect() for x in list(cluster.workers.values())
                                                if x.is_connected()])
        else:
            if cluster.worker.id % 2:
                cluster.worker.disconnect()
            else:
                cluster.worker.destroy()
            wait_disconnect()
    """).check()
    exits = r.records("exit")
    assert sorted(e["id"] for e in exits) == [1, 2, 3, 4]
    assert all((e["code"], e["signal"]) == (0, None) for e in exits), exits


def test_cluster_disconnect_callback_after_all_workers_gone(run_primary):
    # test-cluster-disconnect / -disconnect-idle-worker
    r = run_primary("""
        if cluster.is_primary:
            for _ in range(3):
                cluster.fork()
            exits = []
            cluster.on("exit", lambda w, c, s: exits.append((w.id, c, s)))
            n = {"online": 0}
            def on_online(w):
                n["online"] += 1
                if n["online"] == 3:
                    cluster.disconnect(lambda: out("cb", exits=len(exits),
                                                   workers=sorted(cluster.workers),
                                                   all_dead=all(w.is_dead() for w in ws)))
            ws = list(cluster.workers.values())
            cluster.on("online", on_online)
        else:
            wait_disconnect()
    """).check()
    rec = r.one("cb")
    assert rec["exits"] == 3
    assert rec["workers"] == []
    assert rec["all_dead"] is True


def test_cluster_disconnect_with_no_workers_calls_back_asynchronously(run_primary):
    # test-cluster-disconnect-with-no-workers
    r = run_primary("""
        state = {"in_call": True}
        cluster.disconnect(lambda: out("cb", in_call=state["in_call"]))
        state["in_call"] = False
        out("returned")
    """).check()
    assert r.one("cb")["in_call"] is False
    assert r.tags().index("returned") < r.tags().index("cb")


def test_cluster_disconnect_without_callback(run_primary):
    # test-cluster-disconnect-leak: disconnect right after fork; the workers go, no hang
    r = run_primary("""
        if cluster.is_primary:
            cluster.fork(); cluster.fork()
            cluster.on("exit", lambda w, c, s: out("exit", code=c))
            cluster.disconnect()
        else:
            s = cluster.listen(port=0, host="127.0.0.1")
            wait_disconnect()
            s.close()
    """).check()
    assert [rec["code"] for rec in r.records("exit")] == [0, 0]


def test_disconnect_from_worker_disconnect_event_is_harmless(run_primary):
    # test-cluster-disconnect-before-exit
    r = run_primary("""
        if cluster.is_primary:
            w = cluster.fork()
            w.on("disconnect", lambda: cluster.disconnect(lambda: out("cb")))
            w.on("online", lambda: w.disconnect())
            w.on("exit", lambda c, s: out("exit", code=c))
        else:
            wait_disconnect()
    """).check()
    assert r.one("exit")["code"] == 0
    assert len(r.records("cb")) == 1


def test_disconnect_right_after_fork_exits_zero(run_primary):
    # test-cluster-disconnect-leak / -disconnect-race: a worker told to disconnect before it
    # came online still starts, disconnects and exits 0.
    r = run_primary("""
        if cluster.is_primary:
            cluster.on("exit", lambda w, c, s: out("exit", id=w.id, code=c, signal=s))
            for _ in range(4):
                cluster.fork().disconnect()
        else:
            wait_disconnect()
    """).check()
    exits = r.records("exit")
    assert sorted(e["id"] for e in exits) == [1, 2, 3, 4]
    assert all((e["code"], e["signal"]) == (0, None) for e in exits), r.output()


@pytest.mark.parametrize("policy", ["rr", "none", "reuseport"])
def test_cluster_disconnect_callback_runs_after_shared_handles_are_closed(run_primary, policy):
    # "when all have disconnected and exited and the primary's shared handles are closed,
    # call callback()": the port is free inside the callback.
    from conftest import free_port

    port = free_port()
    r = run_primary(
        f"""
        if cluster.is_primary:
            n = {{"listening": 0}}
            def on_listening(w, a):
                n["listening"] += 1
                if n["listening"] == 2:
                    cluster.disconnect(on_done)
            def on_done():
                try:
                    with socket.socket() as t:
                        t.bind(("127.0.0.1", {port}))
                        t.listen()
                    out("cb", bound=True)
                except OSError as e:
                    out("cb", bound=repr(e))
            cluster.on("listening", on_listening)
            cluster.fork(); cluster.fork()
        else:
            s = cluster.listen(port={port}, host="127.0.0.1")
            wait_disconnect()
    """,
        env={"CLUSTERLAB_SCHED_POLICY": policy},
    ).check()
    assert r.one("cb")["bound"] is True


def test_repeated_disconnect_and_kill_after_death_are_harmless(run_primary):
    r = run_primary("""
        if cluster.is_primary:
            w = cluster.fork()
            def on_online():
                out("twice", same=(w.disconnect() is w) and (w.disconnect() is w))
            w.on("online", on_online)
            def on_exit(code, sig):
                w.kill()
                w.kill("SIGKILL")
                w.disconnect()
                out("after_exit_calls", code=code)
            w.on("exit", on_exit)
        else:
            wait_disconnect()
    """).check()
    assert r.one("twice")["same"] is True
    assert r.one("after_exit_calls")["code"] == 0


def test_every_cluster_disconnect_callback_runs(run_primary):
    r = run_primary("""
        if cluster.is_primary:
            cluster.fork(); cluster.fork()
            n = {"online": 0}
            def on_online(w):
                n["online"] += 1
                if n["online"] == 2:
                    cluster.disconnect(lambda: out("cb", which=1))
                    cluster.disconnect(lambda: out("cb", which=2))
            cluster.on("online", on_online)
        else:
            wait_disconnect()
    """).check()
    assert sorted(rec["which"] for rec in r.records("cb")) == [1, 2]


# Node runs a worker's top-level code before it handles any message from the primary, so a
# 'disconnect' listener added there always hears the disconnect; here the program runs on its
# own thread, beside the channel thread that emits the event.
LATE_DISCONNECT_LISTENER = """
        if cluster.is_primary:
            cluster.setup_primary(start_method={method!r})
            at_online = cluster.fork({{"CASE": "primary-at-online"}})
            at_online.on("online", lambda: at_online.disconnect())
            cluster.fork({{"CASE": "worker-itself"}})
            cluster.on("exit", lambda w, code, sig: out("exit", id=w.id, code=code))
        else:
            def channel_thread_gone():
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and any(
                    t.name == "clusterlab-channel" for t in threading.enumerate()
                ):
                    time.sleep(0.002)

            if os.environ["CASE"] == "primary-at-online":
                # Node's test-cluster-worker-forced-exit, the order forced: the disconnect has
                # been handled (its event emitted) before the program adds its listener.
                channel_thread_gone()
                cluster.worker.on("disconnect", lambda: os._exit(42))
            else:
                # test-cluster-disconnect-exitedAfterDisconnect-race, looped in one process:
                # listeners added while the disconnect completes, and at least 50 after it.
                calls, lock = {{}}, threading.Lock()

                def listener(i):
                    def called():
                        with lock:
                            calls[i] = calls.get(i, 0) + 1
                    return called

                cluster.worker.disconnect()
                added, after = 0, 0
                while after < 50:
                    gone = not any(t.name == "clusterlab-channel" for t in threading.enumerate())
                    (cluster.worker.once if added % 2 else cluster.worker.on)(
                        "disconnect", listener(added))
                    added += 1
                    after += gone
                    if added > 100_000:
                        break
                channel_thread_gone()
                for t in threading.enumerate():
                    if t is not threading.current_thread() and not t.daemon:
                        t.join(10)
                with lock:
                    out("calls", added=added, after=after,
                        missed=sum(1 for i in range(added) if i not in calls),
                        twice=sum(1 for n in calls.values() if n != 1))
"""


@pytest.mark.parametrize("method", ["exec", "forkserver"])
def test_disconnect_listener_added_after_the_disconnect_is_called_once(run_primary, method):
    r = run_primary(LATE_DISCONNECT_LISTENER.format(method=method)).check()
    assert {rec["id"]: rec["code"] for rec in r.records("exit")} == {1: 42, 2: 0}, r.output()
    calls = r.one("calls")
    assert calls["after"] == 50, calls
    assert calls["missed"] == 0 and calls["twice"] == 0, calls
