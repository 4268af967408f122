"""How workers are started: silent, stdio, uid/gid, cwd, exec (script and -m), exec_argv, args,
inspect_port, windows_hide."""

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from conftest import PRELUDE

pytestmark = pytest.mark.timeout(30)


def test_silent_worker_output_readable_in_primary(run_primary):
    # test-cluster-setup-primary: silent applies to forks; output goes to pipes
    r = run_primary("""
        if cluster.is_primary:
            cluster.setup_primary(silent=True)
            w = cluster.fork()
            def on_exit(code, sig):
                outp = w.process.stdout.read().decode()
                errp = w.process.stderr.read().decode()
                out("captured", stdout=outp, stderr=errp)
            w.on("exit", on_exit)
        else:
            print("worker says hi on stdout", flush=True)
            print("worker says hi on stderr", file=sys.stderr, flush=True)
            cluster.worker.disconnect()
    """).check()
    rec = r.one("captured")
    assert "worker says hi on stdout" in rec["stdout"]
    assert "worker says hi on stderr" in rec["stderr"]
    # and it did not go to the primary's own output (only inside the JSON record)
    assert "worker says hi on stdout" not in r.lines
    assert "worker says hi on stderr" not in r.stderr


def test_not_silent_by_default_worker_shares_primary_output(run_primary):
    r = run_primary("""
        if cluster.is_primary:
            w = cluster.fork()
            w.on("online", lambda: out("pipes", stdout=w.process.stdout is None))
        else:
            print("plain worker line", flush=True)
            cluster.worker.disconnect()
    """).check()
    assert "plain worker line" in r.stdout
    assert r.one("pipes")["stdout"] is True


def test_stdio_overrides_silent(run_primary, tmp_path):
    target = tmp_path / "worker-out.txt"
    r = run_primary(f"""
        import subprocess
        if cluster.is_primary:
            f = open({str(target)!r}, "wb")
            cluster.setup_primary(silent=True, stdio=[subprocess.DEVNULL, f, subprocess.STDOUT])
            w = cluster.fork()
            w.on("exit", lambda c, s: out("exit", code=c, stdout_pipe=w.process.stdout is not None))
        else:
            print("to the file", flush=True)
            print("err to the file too", file=sys.stderr, flush=True)
            cluster.worker.disconnect()
    """).check()
    assert r.one("exit")["code"] == 0
    assert r.one("exit")["stdout_pipe"] is False
    text = target.read_text()
    assert "to the file" in text and "err to the file too" in text
    assert "to the file" not in r.stdout


def _public_dir() -> Path:
    d = Path(tempfile.mkdtemp(prefix="clusterlab-uid-", dir="/tmp"))
    d.chmod(0o755)
    return d


def _nobody_can_import() -> str | None:
    try:
        import pwd

        pwd.getpwnam("nobody")
    except KeyError:
        return "no user 'nobody'"
    try:
        res = subprocess.run(
            [sys.executable, "-c", "import clusterlab.cluster"],
            user="nobody",
            group=_nobody_group(),
            capture_output=True,
            text=True,
            timeout=20,
            cwd="/",
        )
    except OSError as e:
        return f"user 'nobody' cannot run {sys.executable}: {e}"
    if res.returncode != 0:
        return f"user 'nobody' cannot import clusterlab from this checkout: {res.stderr[-300:]}"
    return None


def _nobody_group() -> int:
    import pwd

    return pwd.getpwnam("nobody").pw_gid


def test_uid_gid_run_worker_as_nobody(start_primary):
    if os.geteuid() != 0:
        pytest.skip("changing uid needs root")
    why = _nobody_can_import()
    if why:
        pytest.skip(why)
    import pwd

    nobody = pwd.getpwnam("nobody")
    d = _public_dir()
    try:
        p = start_primary(
            f"""
            if cluster.is_primary:
                cluster.setup_primary(uid={nobody.pw_uid}, gid={nobody.pw_gid})
                w = cluster.fork()
                w.on("exit", lambda c, s: out("exit", code=c))
            else:
                out("ids", uid=os.getuid(), euid=os.geteuid(), gid=os.getgid())
                cluster.worker.disconnect()
        """,
            script_dir=d,
            cwd=d,
        )
        assert p.wait(20) == 0, p.output()
        rec = p.records("ids")
        assert len(rec) == 1, p.output()
        assert (rec[0]["uid"], rec[0]["euid"], rec[0]["gid"]) == (
            nobody.pw_uid,
            nobody.pw_uid,
            nobody.pw_gid,
        )
        assert p.records("exit")[0]["code"] == 0
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_gid_runs_worker_with_that_group(run_primary):
    # As root, a group change alone keeps the interpreter readable, so this runs everywhere.
    if os.geteuid() != 0:
        pytest.skip("changing gid needs root")
    gid = _nobody_group()
    r = run_primary(f"""
        if cluster.is_primary:
            cluster.setup_primary(gid={gid})
            cluster.fork()
        else:
            out("ids", uid=os.getuid(), gid=os.getgid(), egid=os.getegid())
            cluster.worker.disconnect()
    """).check()
    rec = r.one("ids")
    assert (rec["gid"], rec["egid"]) == (gid, gid)
    assert rec["uid"] == 0


def test_cwd_default_inherits_and_setting_changes_it(run_primary, tmp_path):
    # test-cluster-cwd
    sub = tmp_path / "elsewhere"
    sub.mkdir()
    r = run_primary(f"""
        if cluster.is_primary:
            out("primary_cwd", cwd=os.getcwd())
            cluster.fork()
            cluster.setup_primary(cwd={str(sub)!r})
            cluster.fork()
        else:
            out("worker_cwd", id=cluster.worker.id, cwd=os.getcwd())
            cluster.worker.disconnect()
    """).check()
    by_id = {rec["id"]: rec["cwd"] for rec in r.records("worker_cwd")}
    assert os.path.realpath(by_id[1]) == os.path.realpath(r.one("primary_cwd")["cwd"])
    assert os.path.realpath(by_id[2]) == os.path.realpath(sub)


def test_exec_script_path(run_primary, tmp_path):
    other = tmp_path / "other_worker.py"
    other.write_text(
        PRELUDE
        + textwrap.dedent("""
        out("other_script", is_worker=cluster.is_worker, id=cluster.worker.id,
            argv0=os.path.basename(sys.argv[0]), args=sys.argv[1:])
        cluster.worker.disconnect()
    """)
    )
    r = run_primary(f"""
        if cluster.is_primary:
            cluster.setup_primary(exec={str(other)!r}, args=["x", "y"])
            cluster.fork()
        else:
            out("main_script_ran_in_worker")
            cluster.worker.disconnect()
    """).check()
    assert r.records("main_script_ran_in_worker") == []
    rec = r.one("other_script")
    assert rec["is_worker"] is True and rec["id"] == 1
    assert rec["argv0"] == "other_worker.py"
    assert rec["args"] == ["x", "y"]


def _make_package(root: Path) -> None:
    pkg = root / "clpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "app.py").write_text(
        PRELUDE
        + textwrap.dedent("""
        if cluster.is_primary:
            out("primary", exec=cluster.settings.get("exec"))
            cluster.setup_primary()
            out("settings", exec=cluster.settings["exec"])
            cluster.fork()
        else:
            out("worker", name=__name__, spec=__spec__.name if __spec__ else None,
                args=sys.argv[1:])
            cluster.worker.disconnect()
    """)
    )
    (pkg / "w.py").write_text(
        PRELUDE
        + textwrap.dedent("""
        out("module_worker", name=__name__, spec=__spec__.name if __spec__ else None,
            is_worker=cluster.is_worker)
        cluster.worker.disconnect()
    """)
    )


def test_exec_defaults_to_dash_m_module_when_primary_started_with_m(start_primary, tmp_path):
    _make_package(tmp_path)
    p = start_primary(
        module="clpkg.app", cwd=tmp_path, args=["arg1"], env={"PYTHONPATH": str(tmp_path)}
    )
    assert p.wait(20) == 0, p.output()
    assert p.records("settings")[0]["exec"] == "-m clpkg.app"
    rec = p.records("worker")
    assert len(rec) == 1, p.output()
    assert rec[0]["name"] == "__main__" and rec[0]["spec"] == "clpkg.app"
    assert rec[0]["args"] == ["arg1"]


def test_exec_dash_m_module_setting(run_primary, tmp_path):
    _make_package(tmp_path)
    r = run_primary(
        """
        if cluster.is_primary:
            cluster.setup_primary(exec="-m clpkg.w")
            cluster.fork()
        else:
            out("main_script_ran_in_worker")
    """,
        env={"PYTHONPATH": str(tmp_path)},
    ).check()
    assert r.records("main_script_ran_in_worker") == []
    rec = r.one("module_worker")
    assert rec["is_worker"] is True
    assert rec["spec"] == "clpkg.w"


def test_exec_argv_passed_to_interpreter(run_primary):
    r = run_primary("""
        if cluster.is_primary:
            cluster.setup_primary(exec_argv=["-X", "dev", "-O"])
            cluster.fork()
        else:
            out("flags", dev=sys.flags.dev_mode, optimize=sys.flags.optimize)
            cluster.worker.disconnect()
    """).check()
    rec = r.one("flags")
    assert rec["dev"] is True and rec["optimize"] == 1


def test_exec_argv_defaults_to_primary_options_in_worker(run_primary):
    r = run_primary(
        """
        if cluster.is_primary:
            cluster.fork()
        else:
            out("flags", dev=sys.flags.dev_mode)
            cluster.worker.disconnect()
    """,
        python_args=["-X", "dev"],
    ).check()
    assert r.one("flags")["dev"] is True


def test_args_default_and_setting(run_primary):
    # test-cluster-setup-primary-argv
    r = run_primary(
        """
        if cluster.is_primary:
            cluster.fork()
            cluster.setup_primary(args=["--custom", "1"])
            cluster.fork()
        else:
            out("argv", id=cluster.worker.id, args=sys.argv[1:])
            cluster.worker.disconnect()
    """,
        args=["--from-cli", "z"],
    ).check()
    by_id = {rec["id"]: rec["args"] for rec in r.records("argv")}
    assert by_id == {1: ["--from-cli", "z"], 2: ["--custom", "1"]}


def test_inspect_port_int(run_primary):
    r = run_primary("""
        if cluster.is_primary:
            cluster.setup_primary(inspect_port=9400)
            cluster.fork()
        else:
            out("port", id=cluster.worker.id, port=cluster.worker.inspect_port)
            cluster.worker.disconnect()
    """).check()
    assert r.one("port")["port"] == 9400


def test_inspect_port_callable(run_primary):
    r = run_primary("""
        if cluster.is_primary:
            counter = iter(range(9500, 9600))
            cluster.setup_primary(inspect_port=lambda: next(counter))
            cluster.fork(); cluster.fork()
        else:
            out("port", id=cluster.worker.id, port=cluster.worker.inspect_port)
            cluster.worker.disconnect()
    """).check()
    by_id = {rec["id"]: rec["port"] for rec in r.records("port")}
    assert by_id == {1: 9500, 2: 9501}


def test_inspect_port_default_is_base_plus_offset(run_primary):
    r = run_primary("""
        if cluster.is_primary:
            cluster.fork(); cluster.fork()
        else:
            out("port", id=cluster.worker.id, port=cluster.worker.inspect_port)
            cluster.worker.disconnect()
    """).check()
    # Node: process.debugPort (9229) + 1 for the first worker forked, + 2 for the second, ...
    by_id = {rec["id"]: rec["port"] for rec in r.records("port")}
    assert by_id == {1: 9229 + 1, 2: 9229 + 2}


def test_windows_hide_is_accepted(run_primary):
    r = run_primary("""
        if cluster.is_primary:
            cluster.setup_primary(windows_hide=True)
            w = cluster.fork()
            w.on("exit", lambda c, s: out("exit", code=c, setting=cluster.settings["windows_hide"]))
        else:
            cluster.worker.disconnect()
    """).check()
    rec = r.one("exit")
    assert (rec["code"], rec["setting"]) == (0, True)


def test_fork_with_unusable_cwd_reports_the_error(run_primary, tmp_path):
    # Node: a spawn failure is the worker's 'error' event (child_process 'error'); raising
    # from fork() is the synchronous Python equivalent. Either way the primary carries on.
    missing = str(tmp_path / "does-not-exist")
    r = run_primary(f"""
        if cluster.is_primary:
            cluster.setup_primary(cwd={missing!r})
            try:
                w = cluster.fork()
            except OSError as e:
                out("raised", type=type(e).__name__)
            else:
                w.on("error", lambda e: out("error_event", type=type(e).__name__))
                w.on("exit", lambda c, s: out("exit", code=c, signal=s))
            cluster.setup_primary(cwd=None)
            w2 = cluster.fork()
            w2.on("exit", lambda c, s: out("second_exit", code=c))
        else:
            cluster.worker.disconnect()
    """).check()
    assert r.records("raised") or r.records("error_event"), r.output()
    assert r.one("second_exit")["code"] == 0
