"""Targets the lab does not start as a clusterlab cluster, measured like its own: a command
whose processes are sampled (per worker where the worker header is its pid), readiness from the
command's ready lines with no probe connection, a url target sampled through its pid file, and
load and target pinned to separate CPUs. The server (prefork_server.py) keeps its own counts."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clusterlab.lab import analyze, load_results
from clusterlab.lab.running.processes import free_port

SERVER = Path(__file__).parent / "prefork_server.py"
pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def _run(tmp_path: Path, target: str, extra: str = "") -> Path:
    scenario = tmp_path / "external.toml"
    scenario.write_text(
        f"""
[target]
{target}
[sweep]
workers = [2]
[workloads]
hello = {{ "/" = 1 }}
[load]
users = 4
warmup = 0.5
duration = 2
connection = "new"
{extra}
"""
    )
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "clusterlab.cli", "run", str(scenario), "--out", str(out), "-q"],
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert done.returncode == 0, done.stderr
    return out


def _records(folder: Path) -> list[dict[str, float]]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def test_a_command_target_is_sampled_per_worker_and_ready_from_its_lines(tmp_path):
    record = tmp_path / "record"
    record.mkdir()
    command = json.dumps([sys.executable, str(SERVER), "{port}", "{workers}", str(record)])
    out = _run(
        tmp_path,
        f'kind = "command"\ncommand = {command}\nready_line = "^worker \\\\d+ ready"',
        '[cpus]\nsplit = "off"',
    )
    run = load_results(out)
    point = analyze(run).points.iloc[0]
    assert point["status"] == "ok" and point["counts_source"] == "header"
    # the command's processes are the target's, not outside noise
    assert point["workers_cpu_pct"] > 0 and point["primary_cpu_pct"] >= 0
    # per worker: the header names the pid, so each worker row has that process's CPU
    workers = run.workers
    assert len(workers) == 2 and (workers["cpu_pct"] > 0).all()
    assert sorted(workers["worker"]) == sorted(str(int(w)) for w in workers["pid"])
    # the server's own view: no connection before the load started (no readiness probe)
    load_started = run.events.loc[run.events["event"] == "load", "time"].min()
    records = _records(record)
    assert len(records) == 2
    assert all(r["first_connection"] >= load_started for r in records)
    # and it served at least what locust counted in the window (warm-up came before)
    assert sum(r["requests"] for r in records) >= point["requests"]


def test_a_command_that_never_prints_its_ready_lines_fails_with_the_count(tmp_path):
    scenario = tmp_path / "never.toml"
    command = json.dumps([sys.executable, str(SERVER), "{port}", "{workers}", str(tmp_path)])
    scenario.write_text(
        f"""
[target]
kind = "command"
command = {command}
ready_line = "never printed"
ready_timeout = 1
[sweep]
workers = [1]
[workloads]
hello = {{ "/" = 1 }}
[load]
users = 1
duration = 1
"""
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "clusterlab.cli",
            "run",
            str(scenario),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    error = load_results(tmp_path / "o").results["error"].iloc[0]
    assert "printed 0 of 1 lines matching ready_line 'never printed' within 1 s" in error


def test_a_url_target_with_a_pid_file_has_its_cpu_measured(tmp_path):
    port, record, pidfile = free_port(), tmp_path / "record", tmp_path / "server.pid"
    record.mkdir()
    server = subprocess.Popen(
        [sys.executable, str(SERVER), str(port), "2", str(record), str(pidfile)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        for _ in range(2):
            assert "ready" in server.stdout.readline()
        while not pidfile.exists():
            time.sleep(0.01)
        out = _run(
            tmp_path,
            f'kind = "url"\nurl = "http://127.0.0.1:{port}"\npidfile = "{pidfile}"',
        )
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=10)
    point = analyze(load_results(out)).points.iloc[0]
    assert point["workers_cpu_pct"] > 0
    assert "CPU is not measured" not in (out / "report.md").read_text()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs to split")
def test_with_cpus_split_load_and_target_run_on_their_own_cpus(tmp_path):
    record = tmp_path / "record"
    record.mkdir()
    command = json.dumps([sys.executable, str(SERVER), "{port}", "{workers}", str(record)])
    out = _run(
        tmp_path,
        f'kind = "command"\ncommand = {command}\nready_line = "ready"',
        '[cpus]\nsplit = "on"',
    )
    meta = json.loads((out / "meta.json").read_text())
    cpus = sorted(os.sched_getaffinity(0))
    assert meta["cpus"] == {"load": cpus[-1:], "target": cpus[:-1], "shared": False}
    log = next((out / "raw").glob("target-*/target.log")).read_text()
    assert log.count(f"cpus={cpus[:-1]}") == 2  # both workers pinned to the target's CPUs
    point = load_results(out).results.iloc[0]
    assert (point["target_cpus"], point["load_cpus"], bool(point["cpu_shared"])) == (
        len(cpus) - 1,
        1,
        False,
    )
    assert f"Load pinned to CPUs {cpus[-1:]}" in (out / "report.md").read_text()
