"""The slow fault in a real target: the chosen worker serves the built-in endpoints a factor
slower (its own CPU time per request grows; the other worker's does not) until the fault's
``fault_end``; a worker of a user's app is stopped and continued on a duty cycle instead, and left
running at the end."""

import http.client
import time
from pathlib import Path

import psutil
import pytest
from target_events import wait_for

from clusterlab.lab.config.scenario import Target
from clusterlab.lab.running.processes import free_port
from clusterlab.lab.running.targets import ClusterTarget, TargetConfig, start_target

HERE = Path(__file__).parent


def slow(target: ClusterTarget, n: int, where: str, factor: float, length: float) -> dict:
    command = {"cmd": "fault", "id": n, "stream": 0, "kind": "slow", "target": where}
    target.inject({**command, "draw": 0.0, "factor": factor, "length": length})
    return wait_for(target, lambda e: e["event"] in ("fault", "fault_skipped") and e["id"] == n)


def start(tmp_path, target: Target) -> ClusterTarget:
    config = TargetConfig(
        target, workers=2, policy="rr", log_path=tmp_path / "t.log", port=free_port()
    )
    handle = start_target(config)
    assert isinstance(handle, ClusterTarget)
    return handle


def cpu_per_request(url: str, pids: dict[str, int], requests: int) -> dict[str, float]:
    """Each worker's CPU seconds per request it served, over ``requests`` new connections to
    /cpu?ms=3 (round robin: half each)."""
    before = {w: sum(psutil.Process(pid).cpu_times()[:2]) for w, pid in pids.items()}
    served = dict.fromkeys(pids, 0)
    for _ in range(requests):
        conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=30)
        conn.request("GET", "/cpu?ms=3")
        response = conn.getresponse()
        response.read()
        conn.close()
        served[str(response.getheader("X-Worker-Id"))] += 1
    used = {w: sum(psutil.Process(pid).cpu_times()[:2]) - before[w] for w, pid in pids.items()}
    assert all(served.values()), served
    return {w: used[w] / served[w] for w in pids}


def test_a_slow_worker_spends_the_factor_more_per_request_and_only_it(tmp_path):
    target = start(tmp_path, Target(kind="builtin"))
    try:
        ready = wait_for(target, lambda e: e["event"] == "ready")
        pids = {str(w): int(pid) for w, pid in ready["workers"].items()}
        # Each worker's first requests also pay for what it loads on first use (a clean-clone
        # pass saw the other worker at 10 ms a request over 8 cold ones): warm both up first.
        cpu_per_request(target.url, pids, 4)
        fault = slow(target, 0, "worker:1", factor=10, length=4.0)
        assert fault["event"] == "fault" and fault["how"] == "slow" and fault["worker"] == 1
        during = cpu_per_request(target.url, pids, 16)
        end = wait_for(target, lambda e: e["event"] == "fault_end" and e["id"] == 0)
        assert end["worker"] == 1 and end["t"] - fault["t"] >= 3.99
        after = cpu_per_request(target.url, pids, 16)
    finally:
        target.stop()
    # 3 ms asked, 30 ms spent by the slowed worker; the other (and it, afterwards) ~3 ms
    assert during["1"] > 0.02 and during["1"] > 4 * during["2"]
    assert after["1"] < 0.015 and during["2"] < 0.015


def test_a_user_apps_worker_is_stopped_on_a_duty_cycle_and_left_running(tmp_path):
    target = start(tmp_path, Target(kind="asgi", app="user_apps:asgi_app", app_dir=str(HERE)))
    try:
        ready = wait_for(target, lambda e: e["event"] == "ready")
        pids = {int(w): int(pid) for w, pid in ready["workers"].items()}
        fault = slow(target, 0, "worker:2", factor=4, length=2.0)
        assert fault["how"] == "duty cycle" and fault["factor"] == 4
        seen = {w: [] for w in pids}
        while not any(e["event"] == "fault_end" for e in target.events()):
            for w, pid in pids.items():
                seen[w].append(psutil.Process(pid).status() == psutil.STATUS_STOPPED)
            time.sleep(0.007)
        time.sleep(0.05)
        states = {w: psutil.Process(pid).status() for w, pid in pids.items()}
    finally:
        target.stop()
    stopped_share = sum(seen[2]) / len(seen[2])
    assert 0.4 < stopped_share < 0.95, stopped_share  # 1 − 1/4 of the time, sampled
    assert not any(seen[1])
    assert psutil.STATUS_STOPPED not in states.values()


@pytest.mark.parametrize("where", ["worker:9"])
def test_a_slow_fault_for_no_such_worker_is_skipped(tmp_path, where):
    target = start(tmp_path, Target(kind="builtin"))
    try:
        wait_for(target, lambda e: e["event"] == "ready")
        assert slow(target, 0, where, factor=4, length=1.0)["event"] == "fault_skipped"
    finally:
        target.stop()


def test_the_target_takes_a_scheduler_as_module_name(tmp_path):
    config = TargetConfig(
        Target(kind="builtin"),
        workers=2,
        policy="clusterlab.cluster._policies:JoinIdleQueue",
        log_path=tmp_path / "t.log",
        port=free_port(),
    )
    target = start_target(config)
    assert isinstance(target, ClusterTarget)
    try:
        wait_for(target, lambda e: e["event"] == "ready")
        served = set()
        for _ in range(8):
            conn = http.client.HTTPConnection(target.url.removeprefix("http://"), timeout=10)
            conn.request("GET", "/hello")
            response = conn.getresponse()
            assert response.read() == b"hello world\n"
            served.add(response.getheader("X-Worker-Id"))
            conn.close()
    finally:
        target.stop()
    assert served <= {"1", "2"} and served
