"""A new user's first hour (issue 14): a plain install runs the lab, failures name their cause,
`serve` fails loudly, the pytest plugin costs nothing until used, limits hold, and the command
line follows the usual conventions. One test per item; each failed on the code before it."""

import argparse
import asyncio
import errno
import os
import re
import socket
import subprocess
import sys
import time
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from conftest import cpus_allowed, pid_alive

from clusterlab import cli
from clusterlab.lab.config.scenario import ScenarioError, load_scenario, parse_scenario

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = """
[target]
{target}
[sweep]
workers = {workers}
[load]
users = 1
warmup = 0
duration = 1
[workloads]
a = {{ "/hello" = 1 }}
"""


def clusterlab(*args, cwd=None, env=None, timeout=60):
    return subprocess.run(
        [sys.executable, "-m", "clusterlab.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
    )


def _name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9_.-]+", requirement).group().lower().replace("_", "-")


# --- 1. a plain install runs the lab ---------------------------------------------------------


def test_the_builtin_targets_server_is_a_core_dependency():
    # what the builtin target serves through (the list): uvicorn with httptools and
    # uvloop; `pip install clusterlab` must bring them, not only the `servers` extra
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_name(r) for r in project["dependencies"]}
    assert {"uvicorn", "uvloop", "httptools"} <= core, core


def test_every_data_file_of_the_package_is_installed_with_it():
    # a file the package reads at run time (the wrk engine's Lua script, templates, schemas)
    # must be in package-data, or a plain (non-editable) install lacks it
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["clusterlab"]
    tracked = subprocess.run(
        ["git", "ls-files", "clusterlab"], capture_output=True, text=True, cwd=ROOT, check=True
    ).stdout.split()
    data = [Path(f).relative_to("clusterlab") for f in tracked if not f.endswith(".py")]
    assert data, tracked
    missing = [str(f) for f in data if not any(f.match(g) for g in globs)]
    assert missing == [], f"not in [tool.setuptools.package-data]: {missing}"


def test_importing_clusterlab_cluster_loads_no_server_or_lab_package():
    code = (
        "import sys; before = set(sys.modules); import clusterlab.cluster; "
        "print(sorted({m.split('.')[0] for m in set(sys.modules) - before} "
        "- set(sys.stdlib_module_names)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert eval(done.stdout) == ["clusterlab", "orjson"]


def test_a_target_that_dies_at_start_up_ends_the_wait_at_once_and_quiet_output_says_why(tmp_path):
    (tmp_path / "boom.py").write_text('raise RuntimeError("cannot reach the database at boot")\n')
    scenario = tmp_path / "s.toml"
    target = 'kind = "script"\nscript = "boom.py"\nready_timeout = 120'
    # one worker: two would write their tracebacks into the one target.log at once, and the
    # tail quoted can then interleave them byte by byte ("RuntimeErrorRuntimeError: : ...")
    scenario.write_text(SCENARIO.format(target=target, workers="[1]"))
    started = time.monotonic()
    done = clusterlab("run", scenario, "-q", "--out", tmp_path / "out", timeout=110)
    elapsed = time.monotonic() - started
    assert done.returncode == 1, done.stderr
    # the wait ends when the workers are gone, not at ready_timeout (120 s; slack for the report)
    assert elapsed < 60, elapsed
    assert "clusterlab: 1 of 1 points failed:" in done.stderr
    assert "point 1: target did not start" in done.stderr
    assert "RuntimeError: cannot reach the database at boot" in done.stderr
    assert str(tmp_path / "out" / "raw" / "target-000" / "target.log") in done.stderr


# --- 2. an app that does not import is bad input --------------------------------------------


def test_an_app_that_does_not_import_is_refused_at_validation_with_its_error(tmp_path):
    scenario = tmp_path / "s.toml"
    scenario.write_text(
        SCENARIO.format(target='kind = "asgi"\napp = "nosuchmod:app"', workers="[1]")
    )
    done = clusterlab("run", scenario, "--out", tmp_path / "out", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stdout == ""
    assert f"{scenario}: target.app: expected an app that imports" in done.stderr
    assert "ModuleNotFoundError: No module named 'nosuchmod'" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.toml"]


def test_an_app_is_imported_in_a_child_process_and_a_missing_attribute_is_named(tmp_path):
    (tmp_path / "myapp.py").write_text(
        f"import os\nopen({str(tmp_path / 'imported-by')!r}, 'w').write(str(os.getpid()))\n"
    )
    scenario = tmp_path / "s.toml"
    scenario.write_text(SCENARIO.format(target='kind = "wsgi"\napp = "myapp:apps"', workers="[1]"))
    with pytest.raises(ScenarioError) as caught:
        load_scenario(scenario)
    assert "AttributeError: module 'myapp' has no attribute 'apps'" in str(caught.value)
    assert int((tmp_path / "imported-by").read_text()) != os.getpid()
    assert "myapp" not in sys.modules
    assert not (tmp_path / "__pycache__").exists()


def test_an_app_whose_import_hangs_is_refused_after_the_timeout_and_killed(tmp_path, monkeypatch):
    (tmp_path / "slow.py").write_text(
        "import os, subprocess, time\n"
        "child = subprocess.Popen(['sleep', '300'])\n"
        f"open({str(tmp_path / 'pids')!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        "time.sleep(300)\napp = None\n"
    )
    scenario = tmp_path / "s.toml"
    scenario.write_text(SCENARIO.format(target='kind = "asgi"\napp = "slow:app"', workers="[1]"))
    monkeypatch.setattr("clusterlab.lab.config.scenario.APP_IMPORT_TIMEOUT", 3.0)
    with pytest.raises(
        ScenarioError, match=r'expected an app that imports within 3 s, got "slow:app"'
    ):
        load_scenario(scenario)
    for pid in map(int, (tmp_path / "pids").read_text().split()):
        assert not pid_alive(pid), f"{pid} outlived the import check"


# --- 3. serve fails loudly ------------------------------------------------------------------


def test_serve_on_a_port_in_use_exits_one_with_one_line():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = clusterlab("serve", "--workers", "2", "--port", port)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("clusterlab serve: cannot start: ")
    assert os.strerror(errno.EADDRINUSE) in done.stderr and str(port) in done.stderr


def test_serve_without_uvicorn_exits_one_with_one_line(tmp_path):
    shadow = tmp_path / "uvicorn"
    shadow.mkdir()
    (shadow / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'uvicorn'\", name='uvicorn')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = clusterlab("serve", "--workers", "2", "--port", "0", env=env)
    assert done.returncode == 1
    assert (
        done.stderr
        == "clusterlab serve: cannot start: ModuleNotFoundError: No module named 'uvicorn'\n"
    )


# --- 4. the pytest plugin costs nothing until used ------------------------------------------


def test_a_pytest_run_with_the_plugin_loaded_imports_nothing_heavy(tmp_path):
    (tmp_path / "test_one.py").write_text(
        "import sys\n\n"
        "def test_one():\n"
        "    assert 'clusterlab.lab.ci.pytest_plugin' in sys.modules\n"
        "    heavy = {'pandas', 'scipy', 'matplotlib', 'numpy', 'locust', 'jsonschema',\n"
        "             'clusterlab.cluster'}\n"
        "    assert not heavy & set(sys.modules), heavy & set(sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_DISABLE_PLUGIN_AUTOLOAD"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_one.py"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout


# --- 5. limits hold -------------------------------------------------------------------------


def _scenario(workers):
    data = {
        "target": {"kind": "builtin"},
        "sweep": {"workers": workers},
        "load": {"users": 1, "duration": 1},
        "workloads": {"a": {"/hello": 1}},
    }
    return parse_scenario(data, "s.toml")


def test_a_multiple_that_comes_to_more_than_256_workers_is_refused_saying_what_it_came_to():
    cpus = cpus_allowed()
    with pytest.raises(ScenarioError) as caught:
        _scenario([1, "300x"])
    assert str(caught.value) == (
        f's.toml: sweep.workers[1]: expected at most 256 workers, got "300x", which is '
        f"{300 * cpus} here (available_parallelism() = {cpus})"
    )
    assert _scenario([f"{256 // cpus}x"]).sweep.workers == (f"{256 // cpus}x",)


@pytest.mark.parametrize("written", ["0x", "0.0x", "00x"])
def test_a_zero_multiple_is_refused(written):
    with pytest.raises(ScenarioError, match=re.escape(f'got "{written}"')):
        _scenario([written])


@pytest.mark.parametrize("workers", ["0", "257"])
def test_serve_refuses_a_worker_count_outside_1_to_256(workers):
    done = clusterlab("serve", "--workers", workers, "--port", "0", timeout=30)
    assert done.returncode == 2
    assert (
        f"expected --workers from 1 to 256 and --port from 0 to 65535, got {workers}" in done.stderr
    )


def _request(path: str, query: str) -> tuple[int, bytes, float]:
    """One request to the built-in app, in this thread: (status, body, CPU seconds spent)."""
    from clusterlab.lab.spawned.endpoints import builtin_app

    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    started = time.thread_time()
    asyncio.run(
        builtin_app({"type": "http", "path": path, "query_string": query.encode()}, receive, send)
    )
    return sent[0]["status"], sent[1]["body"], time.thread_time() - started


@pytest.mark.parametrize(
    ("path", "query"),
    [
        ("/cpu", "ms=abc"),
        ("/cpu", "ms="),
        ("/cpu", "ms=nan"),
        ("/cpu", "ms=-1"),
        ("/cpu", "ms=1001"),
        ("/cpu", "ms=1e9"),
        ("/io", "ms=abc"),
        ("/io", "ms=60000"),
        ("/mixed", "cpu=2&io=x"),
    ],
)
def test_cpu_and_io_refuse_a_cost_that_is_not_a_number_up_to_one_second(path, query):
    status, body, cpu_s = _request(path, query)
    assert status == 400, body
    assert b": expected " in body
    assert cpu_s < 0.2


def test_cpu_still_spends_what_it_is_asked_for():
    status, body, cpu_s = _request("/cpu", "ms=30")
    assert (status, body) == (200, b"cpu\n")
    assert cpu_s >= 0.030


# --- 6. command-line conventions ------------------------------------------------------------


def test_python_m_clusterlab_prints_the_installed_version():
    done = subprocess.run(
        [sys.executable, "-m", "clusterlab", "--version"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0
    assert done.stdout == f"clusterlab {metadata.version('clusterlab')}\n"


def _commands(parser, prefix=()):
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _commands(child, (*prefix, name))


def test_every_command_and_argument_has_help_without_markup_and_options_show_defaults():
    commands = list(_commands(cli._parser()))
    assert len(commands) >= 11
    for names, parser in commands:
        text = parser.format_help()
        assert "``" not in text, names
        assert parser.description, names
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._VersionAction):
                continue
            if isinstance(action, argparse._SubParsersAction):  # its commands, checked above
                continue
            assert action.help, (names, action.dest)
            shown = formatter._expand_help(action)
            has_default = action.default not in (None, False, []) and action.option_strings
            if has_default:
                assert "default" in shown, (names, action.dest, shown)


def test_scenarios_reports_an_invalid_file_on_stderr(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("x = 1")
    done = clusterlab("scenarios", bad)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith(f"invalid  {bad}: ")


def test_an_empty_workload_is_called_empty():
    data = {
        "target": {"kind": "builtin"},
        "sweep": {"workers": [1]},
        "load": {"users": 1, "duration": 1},
        "workloads": {"a": {}},
    }
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(data, "s.toml")
    assert str(caught.value) == (
        "s.toml: workloads.a: expected a table of path = weight, got an empty table"
    )
