"""The primary's event loop: the seed example, cluster.run(), asyncio, signals, the primary's
death in every way, uncaught exceptions in listeners."""

import http.client
import os
import signal
import time

import psutil
import pytest
from conftest import free_port, pid_alive, wait_no_descendants

pytestmark = pytest.mark.timeout(30)

SEED_EXAMPLE = """\
from http.server import BaseHTTPRequestHandler
from clusterlab import cluster, available_parallelism
from clusterlab.servers import ThreadingHTTPServer

class Hello(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"hello world\\n")

if cluster.is_primary:
    for _ in range(available_parallelism()):
        cluster.fork()
else:
    ThreadingHTTPServer(("", 8000), Hello).serve_forever()
"""


def http_get(port: int, path: str = "/", host: str = "127.0.0.1", timeout: float = 5.0):
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read(), dict(resp.getheaders())
    finally:
        conn.close()


def wait_http(port: int, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            return http_get(port, timeout=2.0)
        except OSError as e:
            last = e
            time.sleep(0.05)
    raise AssertionError(f"no HTTP answer on port {port} within {timeout}s: {last!r}")


def test_seed_example_runs_unchanged_and_keeps_primary_alive(start_primary):
    port = free_port()
    p = start_primary(SEED_EXAMPLE.replace("8000", str(port)), prelude=False)
    status, body, _ = wait_http(port)
    assert (status, body) == (200, b"hello world\n")
    # the main script has long ended; the primary must still be there, serving
    assert p.proc.poll() is None
    for _ in range(20):
        assert http_get(port)[:2] == (200, b"hello world\n")
    p.send_signal(signal.SIGINT)
    assert p.wait(15) == 130, p.output()
    assert wait_no_descendants(3.0) == []


def test_primary_runs_its_loop_after_the_script_ends(run_primary):
    r = run_primary("""
        if cluster.is_primary:
            w = cluster.fork()
            w.on("message", lambda m, h: out("message", m=m))
            w.on("exit", lambda c, s: out("exit", code=c))
            out("script_end")
        else:
            time.sleep(0.5)
            cluster.worker.send("alive after the primary's script ended")
            cluster.worker.disconnect()
    """).check()
    assert r.tags() == ["script_end", "message", "exit"]


def test_primary_loop_runs_while_a_non_daemon_thread_waits_for_it(run_primary):
    # The main script ends, but a (non-daemon) thread of the primary waits for a worker's
    # message: the cluster's loop must still deliver events, or the thread waits forever.
    r = run_primary("""
        if cluster.is_primary:
            got = threading.Event()
            def waiter():
                ok = got.wait(8)
                out("waiter", got=ok)
            threading.Thread(target=waiter).start()
            w = cluster.fork()
            w.on("message", lambda m, h: (got.set(), w.disconnect()))
        else:
            cluster.worker.send("hello")
            wait_disconnect()
    """).check()
    assert r.one("waiter")["got"] is True


def test_primary_without_workers_exits_at_once(run_primary):
    t0 = time.monotonic()
    r = run_primary("""
        cluster.setup_primary()
        out("done")
    """).check()
    r.one("done")
    assert time.monotonic() - t0 < 5


def test_cluster_run_returns_when_no_worker_is_alive(run_primary):
    r = run_primary("""
        if cluster.is_primary:
            w = cluster.fork(); w2 = cluster.fork()
            cluster.on("exit", lambda w, c, s: out("exit", id=w.id))
            cluster.run()
            out("after_run", workers=sorted(cluster.workers),
                dead=[w.is_dead(), w2.is_dead()])
        else:
            time.sleep(0.3)
            cluster.worker.disconnect()
    """).check()
    assert r.tags() == ["exit", "exit", "after_run"]
    rec = r.one("after_run")
    assert rec["workers"] == [] and rec["dead"] == [True, True]


def test_primary_usable_from_asyncio(run_primary):
    r = run_primary("""
        import asyncio
        async def main():
            loop = asyncio.get_running_loop()
            done = loop.create_future()
            ticks = 0
            async def ticker():
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.01)
                    ticks += 1
            t = asyncio.create_task(ticker())
            w = cluster.fork()
            threads = []
            def on_exit(worker, code, sig):
                threads.append(threading.get_ident())
                loop.call_soon_threadsafe(lambda: done.done() or done.set_result(code))
            cluster.on("online", lambda w: threads.append(threading.get_ident()))
            cluster.on("exit", on_exit)
            code = await asyncio.wait_for(done, 15)
            t.cancel()
            out("result", code=code, ticks=ticks, loop_thread=threading.get_ident(),
                listener_threads=sorted(set(threads)))
        if cluster.is_primary:
            asyncio.run(main())
            out("after_asyncio_run")
        else:
            time.sleep(1.0)
            cluster.worker.disconnect()
    """).check()
    rec = r.one("result")
    assert rec["code"] == 0
    # the worker lived ~1 s; a free-running 10 ms ticker gets far more than 20 turns
    assert rec["ticks"] >= 20, "the asyncio loop was blocked while waiting for the worker"
    # events are delivered on the loop (its thread), not on some other thread
    assert rec["listener_threads"] == [rec["loop_thread"]]
    r.one("after_asyncio_run")


def test_listeners_in_asyncio_primary_can_await_nothing_but_see_the_running_loop(run_primary):
    r = run_primary("""
        import asyncio
        async def main():
            loop = asyncio.get_running_loop()
            fut = loop.create_future()
            w = cluster.fork()
            def on_online():
                try:
                    same = asyncio.get_running_loop() is loop
                except RuntimeError:
                    same = False
                out("online", same_loop=same)
                w.disconnect()
            w.on("online", on_online)
            w.on("exit", lambda c, s: fut.set_result(c))
            out("exit", code=await asyncio.wait_for(fut, 15))
        if cluster.is_primary:
            asyncio.run(main())
        else:
            wait_disconnect()
    """).check()
    assert r.one("online")["same_loop"] is True
    assert r.one("exit")["code"] == 0


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_to_primary_disconnects_workers_and_exits(start_primary, sig, code):
    p = start_primary("""
        from clusterlab.servers import ThreadingTCPServer
        import socketserver
        class H(socketserver.BaseRequestHandler):
            def handle(self):
                self.request.sendall(b"hi")
        if cluster.is_primary:
            cluster.on("disconnect", lambda w: out("disconnect", id=w.id))
            cluster.on("exit", lambda w, c, s: out("exit", id=w.id, code=c, signal=s))
            cluster.on("listening", lambda w, a: out("listening", id=w.id))
            cluster.fork(); cluster.fork()
        else:
            out("worker_pid")
            ThreadingTCPServer(("127.0.0.1", 0), H).serve_forever()
    """)
    p.wait_for("listening", count=2, timeout=15)
    worker_pids = [rec["pid"] for rec in p.records("worker_pid")]
    p.send_signal(sig)
    assert p.wait(15) == code, p.output()
    assert sorted(rec["id"] for rec in p.records("disconnect")) == [1, 2], p.output()
    assert len(p.records("exit")) == 2, p.output()
    assert not any(pid_alive(pid) for pid in worker_pids)


def test_ctrl_c_to_the_whole_group_leaves_nothing(start_primary):
    # A terminal's Ctrl-C reaches the primary and its workers together.
    p = start_primary("""
        if cluster.is_primary:
            cluster.on("online", lambda w: out("online", id=w.id))
            cluster.fork(); cluster.fork()
        else:
            s = cluster.listen(port=0, host="127.0.0.1")
            serve_pid(s)
    """)
    p.wait_for("online", count=2, timeout=15)
    os.killpg(p.pid, signal.SIGINT)
    assert p.wait(15) == 130, p.output()


def test_signal_while_main_script_still_runs(start_primary):
    p = start_primary("""
        if cluster.is_primary:
            cluster.fork()
            out("forked")
            time.sleep(60)
        else:
            out("worker_up")
            wait_disconnect(60)
    """)
    p.wait_for("forked", timeout=10)
    p.wait_for("worker_up", timeout=10)
    p.send_signal(signal.SIGTERM)
    assert p.wait(15) == 143, p.output()


def test_worker_ignoring_disconnect_is_killed_after_grace_period(start_primary):
    # CLUSTERLAB_SHUTDOWN_GRACE=2: the worker ignoring the disconnect is SIGKILLed 2 s after the
    # primary's SIGTERM, not at the 10 s default. Its death is timed from here (the OS's view:
    # its pid gone), not from the primary's own records.
    grace = 2.0
    p = start_primary(
        """
        import signal as _s
        if cluster.is_primary:
            cluster.on("exit", lambda w, c, s: out("exit", code=c, signal=s))
            cluster.fork()
        else:
            _s.signal(_s.SIGINT, _s.SIG_IGN)
            _s.signal(_s.SIGTERM, _s.SIG_IGN)
            out("ignoring")
            while True:   # main code never returns, so a graceful disconnect cannot finish
                time.sleep(0.1)
    """,
        env={"CLUSTERLAB_SHUTDOWN_GRACE": str(grace)},
    )
    worker = psutil.Process(p.wait_for("ignoring", timeout=15)[0]["pid"])
    sent = time.monotonic()
    p.send_signal(signal.SIGTERM)
    try:
        worker.wait(grace + 6)  # polls: a few ms late at most
    except psutil.TimeoutExpired:
        pytest.fail(f"the worker outlived the {grace} s grace by 6 s\n{p.output()}")
    died_after = time.monotonic() - sent
    assert p.wait(10) == 143, p.output()
    ex = p.one("exit")
    assert (ex["code"], ex["signal"]) == (None, "SIGKILL"), p.output()
    # not before the grace; well before the 10 s default
    assert grace - 0.05 <= died_after < grace + 3, f"killed {died_after:.2f} s after SIGTERM"


def test_primary_sigkilled_leaves_no_worker(start_primary):
    p = start_primary("""
        if cluster.is_primary:
            cluster.on("online", lambda w: out("online", id=w.id))
            cluster.fork(); cluster.fork()
        else:
            out("worker_pid")
            s = cluster.listen(port=0, host="127.0.0.1")
            while True:  # busy main thread: the worker must still notice the primary's death
                pass
    """)
    p.wait_for("online", count=2, timeout=15)
    pids = [rec["pid"] for rec in p.wait_for("worker_pid", count=2)]
    os.kill(p.pid, signal.SIGKILL)
    p.proc.wait(5)
    time.sleep(2.0)  # the contract's bound: no worker alive 2 s after the primary's death
    wait_no_descendants(0)  # reap what has exited
    alive = [pid for pid in pids if pid_alive(pid)]
    assert alive == [], f"workers still alive 2 s after the primary was SIGKILLed: {alive}"


# exec only: a fork-server worker is the template's child, not pytest's to wait for.
@pytest.mark.start_methods("exec")
def test_orphaned_worker_exits_with_status_zero(start_primary):
    # test-cluster-worker-forced-exit: an unexpected disconnect exits the worker with code 0.
    # Orphans are reparented to pytest (a subreaper), so their status is visible here.
    p = start_primary("""
        if cluster.is_primary:
            cluster.on("online", lambda w: out("online", id=w.id))
            cluster.fork()
        else:
            out("worker_pid")
            while True:  # busy main thread
                pass
    """)
    p.wait_for("online", timeout=15)
    pid = p.wait_for("worker_pid")[0]["pid"]
    os.kill(p.pid, signal.SIGKILL)
    p.proc.wait(5)
    # "exits with status 0 within a second, even if its main thread is busy" (some slack)
    deadline = time.monotonic() + 2
    status = None
    while time.monotonic() < deadline:
        try:
            got, st = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pytest.fail("the orphaned worker was not reparented to the subreaper")
        if got == pid:
            status = st
            break
        time.sleep(0.02)
    assert status is not None, "orphaned worker still alive after 2 s"
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"wait status {status:#x}"


def test_exception_in_primary_listener_takes_everything_down(start_primary):
    # test-cluster-primary-error
    p = start_primary("""
        if cluster.is_primary:
            n = {"listening": 0}
            def on_listening(w, a):
                n["listening"] += 1
                if n["listening"] == 2:
                    raise RuntimeError("boom in a primary listener")
            cluster.on("listening", on_listening)
            cluster.fork(); cluster.fork()
        else:
            out("worker_pid")
            s = cluster.listen(port=0, host="127.0.0.1")
            serve_pid(s)
    """)
    assert p.wait(15) == 1, p.output()
    assert "RuntimeError: boom in a primary listener" in p.stderr
    assert "Traceback" in p.stderr
    pids = [rec["pid"] for rec in p.records("worker_pid")]
    assert len(pids) == 2
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and any(pid_alive(x) for x in pids):
        wait_no_descendants(0)
        time.sleep(0.05)
    assert not any(pid_alive(x) for x in pids), "workers outlived a crashed primary"


def test_exception_in_primary_main_script_after_fork_takes_workers_down(start_primary):
    p = start_primary("""
        if cluster.is_primary:
            cluster.fork()
            raise ValueError("main script failed")
        else:
            out("worker_pid")
            wait_disconnect(60)
    """)
    assert p.wait(15) == 1, p.output()
    assert "ValueError: main script failed" in p.stderr


def test_primary_sys_exit_takes_workers_down(start_primary):
    # test-cluster-primary-kill: the primary exits while a worker listens -> the worker goes
    p = start_primary("""
        if cluster.is_primary:
            w = cluster.fork()
            w.on("listening", lambda a: sys.exit(0))
        else:
            out("worker_pid")
            s = cluster.listen(port=0, host="127.0.0.1")
            serve_pid(s)
    """)
    assert p.wait(15) == 0, p.output()
    pid = p.wait_for("worker_pid")[0]["pid"]
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and pid_alive(pid):
        wait_no_descendants(0)
        time.sleep(0.05)
    assert not pid_alive(pid)


def test_exception_in_worker_listener_exits_worker_with_status_one(run_primary):
    r = run_primary("""
        if cluster.is_primary:
            w = cluster.fork()
            when_ready(w, lambda: w.send("explode"))
            cluster.on("exit", lambda w, c, s: out("exit", code=c, signal=s))
        else:
            def on_message(m, h):
                raise RuntimeError("boom in a worker listener")
            cluster.worker.on("message", on_message)
            ready()
            wait_disconnect(60)
    """).check()
    rec = r.one("exit")
    assert (rec["code"], rec["signal"]) == (1, None)
    assert "RuntimeError: boom in a worker listener" in r.stderr


def test_sigterm_while_workers_are_still_starting(start_primary):
    p = start_primary("""
        if cluster.is_primary:
            for _ in range(3):
                cluster.fork()
            out("forked")
        else:
            wait_disconnect(60)
    """)
    p.wait_for("forked", timeout=10)
    p.send_signal(signal.SIGTERM)
    assert p.wait(15) == 143, p.output()


def test_primary_sigkilled_while_workers_are_still_starting(start_primary):
    p = start_primary("""
        if cluster.is_primary:
            cluster.fork(); cluster.fork()
            out("forked")
            time.sleep(60)
        else:
            while True:
                time.sleep(0.05)
    """)
    p.wait_for("forked", timeout=10)
    os.kill(p.pid, signal.SIGKILL)
    p.proc.wait(5)
    # the no_process_left_behind check (3 s) names any worker that outlived its primary


@pytest.mark.parametrize("style", ["run", "script-end"])
def test_ref_keeps_the_loop_running_with_no_worker_alive_until_unref(run_primary, style):
    # libuv's ref: a primary that forks again later (after a worker's exit) keeps its loop
    r = run_primary(f"""
        import asyncio
        if cluster.is_primary:
            cluster.ref()
            exits = []
            def on_exit(w, code, sig):
                exits.append(w.id)
                out("exit", id=w.id, alive=len(cluster.workers), t=time.monotonic())
                if len(exits) == 1:
                    asyncio.get_running_loop().call_later(0.2, cluster.fork)
                else:
                    cluster.unref()
            cluster.on("exit", on_exit)
            cluster.on("fork", lambda w: out("fork", id=w.id, t=time.monotonic()))
            cluster.fork()
            if {style!r} == "run":
                cluster.run()
                out("run returned")
        else:
            sys.exit(0)
    """).check()
    assert [rec["id"] for rec in r.records("exit")] == [1, 2]
    assert [rec["alive"] for rec in r.records("exit")] == [0, 0]
    second_fork = r.records("fork")[1]
    assert second_fork["t"] - r.records("exit")[0]["t"] >= 0.2
    assert len(r.records("run returned")) == (1 if style == "run" else 0)


def test_unref_without_ref_raises():
    from clusterlab import cluster

    with pytest.raises(RuntimeError, match="ref"):
        cluster.unref()
