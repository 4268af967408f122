"""psutil sampling of real processes: a busy loop shows as busy, a sleeper as idle, each as the
OS counts their CPU time over the same window."""

import subprocess
import sys
import time

import psutil
import pytest

from clusterlab.lab.running.sampler import Sampler, window_usage


@pytest.fixture
def busy_and_idle():
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    idle = subprocess.Popen(
        [sys.executable, "-c", "import time; print('asleep', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert idle.stdout.readline() == "asleep\n"  # started up: from here on, no CPU at all
        yield busy, idle
    finally:
        for proc in (busy, idle):
            proc.kill()
            proc.wait()
        idle.stdout.close()


def os_cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def test_window_usage_tells_a_busy_process_from_an_idle_one(busy_and_idle):
    busy, idle = busy_and_idle
    sources = {("generator", "busy"): busy.pid, ("worker", "idle"): idle.pid}
    start, busy0 = time.time(), os_cpu_seconds(busy.pid)
    with Sampler(lambda: sources, interval=0.1) as sampler:
        # enough samples for a window: wait for them, not for a length of time
        deadline = time.monotonic() + 30
        while (sampler.frame()["key"] == "busy").sum() < 10:
            assert time.monotonic() < deadline, "the sampler took fewer than 10 samples in 30 s"
            time.sleep(0.05)
    end, busy1 = time.time(), os_cpu_seconds(busy.pid)
    usage = window_usage(sampler.frame(), start, end).set_index("key")
    # The busy loop: the share of a core the OS counted for it over the whole window, give or
    # take what fell outside the first and last samples (a sampling interval at each end).
    os_pct = 100.0 * (busy1 - busy0) / (end - start)
    sampled = usage.loc["busy"]
    assert sampled["cpu_pct"] == pytest.approx(os_pct, abs=15), (sampled, os_pct)
    assert sampled["cpu_s"] <= busy1 - busy0 + 0.02  # never more than the OS counted
    assert sampled["cpu_s"] > 0
    # The sleeper used no CPU in the window at all, and is a real process in memory.
    assert usage.loc["idle", "cpu_s"] == 0.0
    assert usage.loc["idle", "rss_mb"] > 1
    # The machine's busy time includes the busy loop's.
    machine = usage.loc["all"]
    assert machine["role"] == "machine" and machine["cpu_s"] >= sampled["cpu_s"] - 0.05
