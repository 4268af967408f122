"""psutil sampling of real processes: a busy loop shows as busy, a sleeper as idle."""

import subprocess
import sys
import time

import pytest

from clusterlab.lab.running.sampler import Sampler, window_usage


@pytest.fixture
def busy_and_idle():
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield busy, idle
    for proc in (busy, idle):
        proc.kill()
        proc.wait()


def test_window_usage_tells_a_busy_process_from_an_idle_one(busy_and_idle):
    busy, idle = busy_and_idle
    sources = {("generator", "busy"): busy.pid, ("worker", "idle"): idle.pid}
    start = time.time()
    with Sampler(lambda: sources, interval=0.1) as sampler:
        time.sleep(1.5)
    usage = window_usage(sampler.frame(), start, time.time()).set_index("key")
    assert usage.loc["busy", "cpu_pct"] > 50
    assert usage.loc["idle", "cpu_pct"] < 10
    assert usage.loc["idle", "rss_mb"] > 1
    machine = usage.loc["all"]
    assert machine["role"] == "machine" and machine["cpu_pct"] >= usage.loc["busy", "cpu_pct"] * 0.8
