"""cluster.settings and cluster.setup_primary (defaults, cumulative, validation, 'setup')."""

import pytest

pytestmark = pytest.mark.timeout(30)

ALL_KEYS = {
    "exec",
    "args",
    "exec_argv",
    "cwd",
    "serialization",
    "silent",
    "stdio",
    "uid",
    "gid",
    "inspect_port",
    "windows_hide",
    "start_method",
    "preload",
}


def test_settings_empty_before_first_use(run_primary):
    # test-cluster-setup-primary-cumulative: {} before setupPrimary()/fork()
    r = run_primary("""
        out("before", settings=dict(cluster.settings))
    """).check()
    assert r.one("before")["settings"] == {}


def test_settings_hold_every_key_with_defaults_after_setup_primary(run_primary):
    r = run_primary(
        """
        cluster.setup_primary()
        s = cluster.settings
        out("settings", keys=sorted(s), exec=s["exec"], args=list(s["args"]),
            exec_argv=list(s["exec_argv"]), cwd=s["cwd"], serialization=s["serialization"],
            silent=s["silent"], stdio=s["stdio"], uid=s["uid"], gid=s["gid"],
            inspect_port=s["inspect_port"], windows_hide=s["windows_hide"],
            argv0=os.path.realpath(sys.argv[0]), exec_real=os.path.realpath(s["exec"]))
    """,
        args=["alpha", "beta"],
    ).check()
    rec = r.one("settings")
    assert set(rec["keys"]) == ALL_KEYS
    assert rec["exec_real"] == rec["argv0"], "exec defaults to the primary's own script"
    assert rec["args"] == ["alpha", "beta"], "args defaults to sys.argv[1:]"
    assert rec["exec_argv"] == []
    assert rec["cwd"] is None
    assert rec["serialization"] == "json"
    assert rec["silent"] is False
    assert rec["stdio"] is None
    assert rec["uid"] is None
    assert rec["gid"] is None
    assert rec["inspect_port"] is None
    assert rec["windows_hide"] is False


def test_settings_after_fork_hold_every_key(run_primary):
    r = run_primary("""
        if cluster.is_primary:
            cluster.fork()
            out("settings", keys=sorted(cluster.settings))
        else:
            cluster.worker.disconnect()
    """).check()
    assert set(r.one("settings")["keys"]) == ALL_KEYS


def test_exec_argv_defaults_to_primary_interpreter_options(run_primary):
    r = run_primary(
        """
        cluster.setup_primary()
        out("settings", exec_argv=list(cluster.settings["exec_argv"]))
    """,
        python_args=["-X", "dev"],
    ).check()
    assert r.one("settings")["exec_argv"] == ["-X", "dev"]


def test_settings_is_read_only(run_primary):
    r = run_primary("""
        cluster.setup_primary()
        try:
            cluster.settings["silent"] = True
        except TypeError:
            out("ok")
        out("silent", value=cluster.settings["silent"])
    """).check()
    r.one("ok")
    assert r.one("silent")["value"] is False


def test_setup_primary_is_cumulative(run_primary):
    # test-cluster-setup-primary-cumulative
    r = run_primary("""
        cluster.setup_primary(args=["a"], silent=True)
        s1 = dict(cluster.settings)
        cluster.setup_primary({"exec_argv": ["-X", "dev"]})
        s2 = dict(cluster.settings)
        cluster.setup_primary(silent=False)
        s3 = dict(cluster.settings)
        out("s", s1=[list(s1["args"]), s1["silent"]],
            s2=[list(s2["args"]), s2["silent"], list(s2["exec_argv"])],
            s3=[list(s3["args"]), s3["silent"], list(s3["exec_argv"])],
            exec_kept=s1["exec"] == s3["exec"])
    """).check()
    rec = r.one("s")
    assert rec["s1"] == [["a"], True]
    assert rec["s2"] == [["a"], True, ["-X", "dev"]]
    assert rec["s3"] == [["a"], False, ["-X", "dev"]]
    assert rec["exec_kept"] is True


def test_setup_primary_unknown_key_raises_type_error_naming_it(run_primary):
    r = run_primary("""
        for call in (lambda: cluster.setup_primary(no_such_setting=1),
                     lambda: cluster.setup_primary({"other_bogus_key": 2})):
            try:
                call()
            except TypeError as e:
                out("raised", msg=str(e))
            except Exception as e:
                out("wrong", type=type(e).__name__, msg=str(e))
            else:
                out("no_raise")
    """).check()
    assert r.records("wrong") == [] and r.records("no_raise") == [], r.output()
    msgs = [rec["msg"] for rec in r.records("raised")]
    assert len(msgs) == 2
    assert "no_such_setting" in msgs[0]
    assert "other_bogus_key" in msgs[1]


@pytest.mark.parametrize(
    "key,value",
    [
        ("serialization", "'xml'"),
        ("inspect_port", "'not-a-port'"),
        ("exec_argv", "5"),
        ("args", "7"),
    ],
)
def test_setup_primary_bad_value_raises_naming_the_key(run_primary, key, value):
    r = run_primary(f"""
        try:
            cluster.setup_primary({key}={value})
        except (TypeError, ValueError) as e:
            out("raised", msg=str(e))
        else:
            out("no_raise", settings=dict(cluster.settings))
    """).check()
    assert r.records("no_raise") == [], r.output()
    assert key in r.one("raised")["msg"]


def test_setup_event_once_per_call_async_with_call_time_copy(run_primary):
    # test-cluster-setup-primary-emit / -multiple: asynchronous, one per call, each with the
    # settings of its call.
    r = run_primary("""
        events = []
        cluster.on("setup", lambda s: events.append(s))
        cluster.setup_primary(args=["first"])
        cluster.setup_primary(args=["second"])
        cluster.setup_primary()
        out("inside", n=len(events))
        def report(s):
            if len(events) == 3:
                out("events", args=[list(e["args"]) for e in events],
                    distinct=len({id(e) for e in events}), full=[sorted(e) for e in events])
        cluster.on("setup", report)
    """).check()
    assert r.one("inside")["n"] == 0, "'setup' must be emitted asynchronously"
    rec = r.one("events")
    assert rec["args"] == [["first"], ["second"], ["second"]]
    assert rec["distinct"] == 3
    for keys in rec["full"]:
        assert set(keys) == ALL_KEYS


def test_setup_event_payload_is_a_copy(run_primary):
    r = run_primary("""
        def on_setup(s):
            try:
                s["silent"] = "mutated"  # may be read-only; either way settings must not change
            except TypeError:
                pass
            out("after", silent=cluster.settings["silent"])
        cluster.on("setup", on_setup)
        cluster.setup_primary()
    """).check()
    assert r.one("after")["silent"] is False


def test_setup_master_is_an_alias(run_primary):
    r = run_primary("""
        cluster.on("setup", lambda s: out("setup", args=list(s["args"])))
        cluster.setup_master(args=["m"])
        out("settings", args=list(cluster.settings["args"]))
    """).check()
    assert r.one("settings")["args"] == ["m"]
    assert r.one("setup")["args"] == ["m"]


def test_settings_apply_to_later_forks_only(run_primary):
    r = run_primary(
        """
        if cluster.is_primary:
            cluster.fork()
            cluster.setup_primary(args=["later"])
            cluster.fork()
        else:
            out("argv", id=cluster.worker.id, args=sys.argv[1:])
            cluster.worker.disconnect()
    """,
        args=["orig"],
    ).check()
    by_id = {rec["id"]: rec["args"] for rec in r.records("argv")}
    assert by_id == {1: ["orig"], 2: ["later"]}
