"""The command line's exit statuses: 0 success, 1 failure, 2 bad input (and nothing written)."""

import json
import re
import signal
import subprocess
import sys
import urllib.request

import pytest
from conftest import cpus_allowed

# Bad input, machine facts and `serve` answering from both its workers (its line comes once
# every worker listens): exit statuses and counts, no load and nothing timed beyond generous
# timeouts, so it runs beside the cluster tests.
pytestmark = pytest.mark.parallel_ok


def clusterlab(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "clusterlab.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def test_a_bad_scenario_is_one_line_exit_two_and_nothing_written(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[target]\nkind = "builtin"\n[sweep]\nworkers = [0]\n[load]\nusers = 1\n'
        'duration = 1\n[workloads]\na = { "/hello" = 1 }\n'
    )
    done = clusterlab("run", bad, "--out", tmp_path / "out")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert f"{bad}: sweep.workers[0]: expected a positive integer" in done.stderr
    assert not (tmp_path / "out").exists()


def test_run_refuses_an_existing_output_directory(tmp_path):
    done = clusterlab("run", "quick", "--out", tmp_path)
    assert done.returncode == 2 and "does not exist yet" in done.stderr


def test_run_of_a_missing_file_exits_two_without_writing(tmp_path):
    done = clusterlab("run", tmp_path / "nope.toml", cwd=tmp_path)
    assert done.returncode == 2 and "nope.toml: no such file" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_usage_errors_exit_two():
    assert clusterlab("frobnicate").returncode == 2
    assert clusterlab("run").returncode == 2
    assert clusterlab("serve", "--workers", "x").returncode == 2


def test_report_of_something_that_is_not_a_run_exits_two(tmp_path):
    done = clusterlab("report", tmp_path)
    assert done.returncode == 2 and "meta.json" in done.stderr


def test_scenarios_lists_the_bundled_ones_and_rejects_a_bad_file(tmp_path):
    done = clusterlab("scenarios")
    assert done.returncode == 0
    assert {"quick", "policies", "capacity"} <= set(re.findall(r"^ok\s+(\w+)", done.stdout, re.M))
    bad = tmp_path / "bad.toml"
    bad.write_text("x = 1")
    done = clusterlab("scenarios", bad)
    assert done.returncode == 2 and "invalid" in done.stderr


def test_info_prints_machine_facts():
    done = clusterlab("info")
    assert done.returncode == 0
    facts = json.loads(done.stdout)
    # the CPUs this process may use, as the test reads them from the OS (affinity, cgroup quota)
    assert facts["available_parallelism"] == cpus_allowed()
    assert facts["packages"]["locust"]


def test_serve_answers_from_every_worker_and_stops_on_ctrl_c():
    proc = subprocess.Popen(
        [sys.executable, "-m", "clusterlab.cli", "serve", "--workers", "2", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/", line).group(0)
        seen = set()
        for _ in range(40):
            request = urllib.request.Request(url + "hello", headers={"Connection": "close"})
            with urllib.request.urlopen(request, timeout=5) as response:
                assert response.read() == b"hello world\n"
                seen.add(response.headers["X-Worker-Id"])
        assert seen == {"1", "2"}
        # Ctrl-C: the workers finish and the primary exits as an interrupted program does
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 128 + signal.SIGINT
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
