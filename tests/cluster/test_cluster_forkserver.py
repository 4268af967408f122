"""Start method "forkserver": workers forked from a pre-started template process.

Every cluster test that starts a primary also runs in this mode (tests/conftest.py); these
tests, whose primaries ask for the fork server themselves, run once and cover what is particular
to it: preloading, the template's lifetime, exit statuses
reported through the template, stdio, settings, and a killed template.
"""

import os
import signal
import textwrap

import psutil
import pytest

from clusterlab.cluster import _settings
from clusterlab.cluster._forkclient import program_imports

# each primary here asks for the fork server itself: one run is enough
pytestmark = [pytest.mark.timeout(30), pytest.mark.start_methods("forkserver")]


def test_program_imports_lists_top_level_absolute_imports(tmp_path):
    script = tmp_path / "app.py"
    script.write_text(
        textwrap.dedent("""
        import os, json as j
        from http import server
        from . import sibling          # relative: not preloadable by name
        import xml.dom.minidom
        def f():
            import decimal             # not top level: runs only if called
        if True:
            import fractions           # conditional: left to the program
    """)
    )
    assert program_imports(str(script)) == ["os", "json", "http", "xml.dom.minidom"]
    assert program_imports(str(tmp_path / "missing.py")) == []
    (tmp_path / "bad.py").write_text("def (:\n")
    assert program_imports(str(tmp_path / "bad.py")) == []
    assert "gc" in program_imports("-m timeit")


def test_bad_start_method_setting_and_environment_are_refused(monkeypatch):
    with pytest.raises(ValueError, match="start_method"):
        _settings.validate("start_method", "spawn")
    with pytest.raises(TypeError, match="preload"):
        _settings.validate("preload", "json")
    monkeypatch.setenv("CLUSTERLAB_START_METHOD", "thread")
    with pytest.raises(ValueError, match="CLUSTERLAB_START_METHOD"):
        _settings.defaults()


def test_workers_come_from_one_template_with_the_program_preloaded(run_primary):
    r = run_primary("""
        # Was colorsys already imported when this process reached the program's own import of it?
        # Only a worker forked from a template that preloaded it can say yes.
        before_import = "colorsys" in sys.modules
        import colorsys  # top-level import of the worker program: preloaded by the template
        if cluster.is_primary:
            out("primary", had_colorsys=before_import)
            cluster.setup_primary(start_method="forkserver")
            done = []
            def on_exit(w, code, sig):
                out("exit", id=w.id, code=code, signal=sig, pid=w.process.pid,
                    returncode=w.process.returncode, poll=w.process.poll())
            cluster.on("exit", on_exit)
            cluster.on("online", lambda w: out("online", id=w.id, pid=w.process.pid))
            for i in range(3):
                cluster.fork({"NTH": str(i)})
        else:
            import psutil
            parent = psutil.Process().parent()
            out("worker", id=cluster.worker.id, nth=os.environ["NTH"], had_colorsys=before_import,
                parent=parent.pid, parent_cmd=" ".join(parent.cmdline()),
                is_worker=cluster.is_worker, primary_pid=os.getppid(),
                worker_id_env="NODE_UNIQUE_ID" in os.environ or "CLUSTERLAB_WORKER_ID" in os.environ)
            sys.exit(int(os.environ["NTH"]) + 3)
    """).check()
    workers = r.records("worker")
    assert sorted(w["nth"] for w in workers) == ["0", "1", "2"]
    assert all(w["is_worker"] for w in workers)
    # the program's top-level import was in every worker before the program ran, and only there
    assert r.one("primary")["had_colorsys"] is False
    assert [w["had_colorsys"] for w in workers] == [True, True, True]
    assert not any(w["worker_id_env"] for w in workers), "the worker-id variable is removed"
    parents = {w["parent"] for w in workers}
    assert len(parents) == 1, "every worker is a child of the same template process"
    assert "_forkserver" in workers[0]["parent_cmd"]
    exits = {rec["id"]: rec for rec in r.records("exit")}
    online = {rec["id"]: rec["pid"] for rec in r.records("online")}
    for w in workers:
        rec = exits[w["id"]]
        assert rec["code"] == int(w["nth"]) + 3 and rec["signal"] is None
        assert rec["returncode"] == rec["code"] == rec["poll"]
        assert online[w["id"]] == rec["pid"]


def test_exit_by_signal_and_kill_reach_the_primary(run_primary):
    r = run_primary(
        """
        if cluster.is_primary:
            cluster.setup_primary(start_method="forkserver")
            w = cluster.fork()
            w.on("online", lambda: w.process.send_signal(signal.SIGKILL))
            w.on("exit", lambda code, sig: out("exit1", code=code, signal=sig,
                                               rc=w.process.returncode))
            def second():
                w2 = cluster.fork()
                w2.on("online", lambda: w2.kill("SIGTERM"))
                w2.on("exit", lambda code, sig: out("exit2", code=code, signal=sig))
            w.on("exit", lambda c, s: second())
        else:
            while True:
                time.sleep(1)
    """.replace("signal.SIGKILL", "9")
    ).check()
    assert (r.one("exit1")["code"], r.one("exit1")["signal"], r.one("exit1")["rc"]) == (
        None,
        "SIGKILL",
        -9,
    )
    assert (r.one("exit2")["code"], r.one("exit2")["signal"]) == (None, "SIGTERM")


def test_explicit_preload_list_is_imported_before_the_program_runs(run_primary):
    r = run_primary("""
        if cluster.is_primary:
            cluster.setup_primary(start_method="forkserver", preload=["json.tool", "no_such_module_x"])
            cluster.fork()
        else:
            out("preloaded", tool="json.tool" in sys.modules)
            cluster.worker.disconnect()
    """).check()
    assert r.one("preloaded")["tool"] is True


def test_silent_worker_output_goes_to_pipes_in_the_primary(run_primary):
    r = run_primary("""
        if cluster.is_primary:
            cluster.setup_primary(start_method="forkserver", silent=True)
            w = cluster.fork()
            def on_exit(code, sig):
                out("captured", stdout=w.process.stdout.read().decode(),
                    stderr=w.process.stderr.read().decode(), code=code)
            w.on("exit", on_exit)
        else:
            print("hello on stdout", flush=True)
            print("hello on stderr", file=sys.stderr, flush=True)
            cluster.worker.disconnect()
    """).check()
    rec = r.one("captured")
    assert "hello on stdout" in rec["stdout"] and "hello on stderr" in rec["stderr"]
    assert rec["code"] == 0
    assert "hello on stdout" not in r.lines


def test_unusable_cwd_raises_in_fork_like_exec(run_primary, tmp_path):
    r = run_primary(f"""
        if cluster.is_primary:
            cluster.setup_primary(start_method="forkserver")
            cluster.fork().on("exit", lambda c, s: out("first_exit", code=c))
            cluster.setup_primary(cwd={str(tmp_path / "missing")!r})
            try:
                cluster.fork()
            except OSError as exc:
                out("raised", type=type(exc).__name__)
            cluster.setup_primary(cwd={str(tmp_path)!r})
            cluster.fork().on("exit", lambda c, s: out("third_exit", code=c))
        else:
            out("worker_cwd", cwd=os.getcwd())
            cluster.worker.disconnect()
    """).check()
    assert r.one("raised")["type"] == "FileNotFoundError"
    assert r.one("first_exit")["code"] == 0 and r.one("third_exit")["code"] == 0
    cwds = [rec["cwd"] for rec in r.records("worker_cwd")]
    assert os.path.realpath(str(tmp_path)) in [os.path.realpath(c) for c in cwds]


def test_changed_settings_replace_the_template_and_the_old_one_waits_for_its_workers(
    run_primary, tmp_path
):
    other = tmp_path / "other"
    other.mkdir()
    r = run_primary(f"""
        import psutil
        if cluster.is_primary:
            cluster.setup_primary(start_method="forkserver")
            a = cluster.fork()
            def parent_of(pid):
                return psutil.Process(pid).ppid()
            def on_a_online():
                out("a", template=parent_of(a.process.pid))
                cluster.setup_primary(cwd={str(other)!r})  # new start settings: a new template
                b = cluster.fork()
                def on_b_online():
                    out("b", template=parent_of(b.process.pid),
                        old_alive=psutil.pid_exists(parent_of(a.process.pid)))
                    a.disconnect()
                    b.disconnect()
                b.on("online", on_b_online)
            a.on("online", on_a_online)
            cluster.on("exit", lambda w, c, s: out("exit", id=w.id, code=c))
        else:
            time.sleep(0.2)
    """).check()
    assert r.one("a")["template"] != r.one("b")["template"]
    assert r.one("b")["old_alive"] is True, "the old template stays while its worker runs"
    assert sorted(rec["code"] for rec in r.records("exit")) == [0, 0]


def test_a_killed_template_is_replaced_and_its_orphans_exit_with_unknown_status(run_primary):
    r = run_primary(
        """
        import psutil
        if cluster.is_primary:
            cluster.setup_primary(start_method="forkserver")
            a = cluster.fork()
            def on_a_online():
                template = psutil.Process(a.process.pid).ppid()
                os.kill(template, signal.SIGKILL)
                time.sleep(0.3)
                b = cluster.fork()  # a new template starts
                b.on("online", lambda: (out("b_online", template=psutil.Process(b.process.pid).ppid(),
                                            old=template), a.kill("SIGKILL"), b.kill("SIGKILL")))
            a.on("online", on_a_online)
            cluster.on("exit", lambda w, c, s: out("exit", id=w.id, code=c, signal=s))
        else:
            while True:
                time.sleep(1)
    """.replace("signal.SIGKILL", "9"),
        timeout=25,
    ).check()
    assert r.one("b_online")["template"] != r.one("b_online")["old"]
    exits = {rec["id"]: rec for rec in r.records("exit")}
    assert (exits[1]["code"], exits[1]["signal"]) == (None, None), (
        "status unknown: the template that reaped it is gone"
    )
    assert (exits[2]["code"], exits[2]["signal"]) == (None, "SIGKILL"), (
        "reported by the new template"
    )


def test_the_template_exits_with_the_primary_and_leaves_nothing(start_primary):
    p = start_primary("""
        if cluster.is_primary:
            cluster.setup_primary(start_method="forkserver")
            w = cluster.fork()
            w.on("listening", lambda a: out("listening", pid=w.process.pid))
        else:
            from clusterlab.servers import ThreadingHTTPServer
            from http.server import BaseHTTPRequestHandler
            ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler).serve_forever()
    """)
    (rec,) = p.wait_for("listening", timeout=15)
    worker = psutil.Process(rec["pid"])
    template = psutil.Process(worker.ppid())
    os.kill(p.pid, signal.SIGKILL)
    gone, alive = psutil.wait_procs([worker, template], timeout=5)
    assert alive == [], f"still alive 5 s after the primary was SIGKILLed: {alive}"


def test_an_explicit_empty_preload_is_a_change_of_settings(run_primary):
    # preload=None reads the program's imports; preload=[] preloads nothing: not the same template.
    r = run_primary("""
        import psutil
        if cluster.is_primary:
            cluster.setup_primary(start_method="forkserver")
            def second(a):
                cluster.setup_primary(preload=[])
                b = cluster.fork()
                b.on("online", lambda: (out("templates", a=psutil.Process(a.process.pid).ppid(),
                                            b=psutil.Process(b.process.pid).ppid()),
                                        a.disconnect(), b.disconnect()))
            a = cluster.fork()
            a.on("online", lambda: second(a))
        else:
            time.sleep(0.2)
    """).check()
    rec = r.one("templates")
    assert rec["a"] != rec["b"]
