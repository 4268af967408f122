"""A new user's first hour (issue 14): a plain install runs the lab, failures name their cause,
`serve` fails loudly, the pytest plugin costs nothing until used, limits hold, and the command
line follows the usual conventions. One test per item; each failed on the code before it."""

import errno
import os
import re
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

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
    scenario.write_text(SCENARIO.format(target=target, workers="[2]"))
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
        "    heavy = {'pandas', 'scipy', 'matplotlib', 'numpy', 'locust', 'jsonschema'}\n"
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
