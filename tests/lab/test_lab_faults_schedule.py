"""Fault schedules: interval times inside [start, stop), seeded Poisson arrivals that reproduce,
the same faults for every policy of a repeat, and the injector sending each at its time after
locust marks the measured window."""

import errno
import json
import os
import random
import statistics
import threading
import time

import pytest

from clusterlab.lab.config.scenario import Fault
from clusterlab.lab.running.faults import FaultInjector, PlannedFault, fault_times, schedule
from clusterlab.lab.running.targets import TargetError

pytestmark = pytest.mark.parallel_ok  # starts no load: runs beside the cluster tests


def test_interval_faults_start_one_interval_in_and_stop_before_the_end():
    rng = random.Random(0)
    assert fault_times(Fault("sigkill", every=3), 20, rng) == [3, 6, 9, 12, 15, 18]
    assert fault_times(Fault("sigkill", every=3), 18, rng) == [3, 6, 9, 12, 15]


def test_interval_faults_honour_start_and_stop():
    rng = random.Random(0)
    assert fault_times(Fault("sigkill", every=2, start=1, stop=7), 20, rng) == [1, 3, 5]
    assert fault_times(Fault("hang", every=1, start=10.5, stop=11), 20, rng) == [10.5]
    assert fault_times(Fault("sigkill", every=5, start=0), 10, rng) == [0, 5]


def test_random_faults_are_poisson_arrivals_within_the_window():
    fault = Fault("sigkill", rate=2.0, start=5, stop=505)
    times = fault_times(fault, 600, random.Random(7))
    assert all(5 < t < 505 for t in times) and times == sorted(times)
    # 1000 expected; a Poisson count's sd is about 32
    assert 850 < len(times) < 1150
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert statistics.mean(gaps) == pytest.approx(0.5, rel=0.1)
    # exponential gaps: the standard deviation equals the mean
    assert statistics.stdev(gaps) == pytest.approx(statistics.mean(gaps), rel=0.15)


def test_a_seeded_schedule_reproduces_and_seeds_and_repeats_change_it():
    faults = (Fault("sigkill", rate=0.5, seed=4), Fault("exit", every=4, code=3))
    first = schedule(faults, 30, repeat=0)
    assert first == schedule(faults, 30, repeat=0)
    assert [p.offset for p in first] == sorted(p.offset for p in first)
    assert [p.id for p in first] == list(range(len(first)))
    assert {p.stream for p in first} == {0, 1}
    assert [p.offset for p in first if p.stream == 1] == [4, 8, 12, 16, 20, 24, 28]
    other_repeat = schedule(faults, 30, repeat=1)
    assert [p.offset for p in other_repeat if p.stream == 0] != [
        p.offset for p in first if p.stream == 0
    ]
    reseeded = schedule((Fault("sigkill", rate=0.5, seed=5), faults[1]), 30, repeat=0)
    assert [p.offset for p in reseeded if p.stream == 0] != [
        p.offset for p in first if p.stream == 0
    ]
    assert all(0 <= p.draw < 1 for p in first)


def test_a_planned_fault_becomes_the_primarys_command():
    fault = Fault("exception", every=2, target="busiest", fatal=True)
    (planned, *_) = schedule((fault,), 10, repeat=0)
    command = planned.command()
    assert command == {
        "cmd": "fault",
        "id": 0,
        "stream": 0,
        "kind": "exception",
        "target": "busiest",
        "draw": planned.draw,
        "code": 1,
        "hang": "sigstop",
        "fatal": True,
        "factor": None,
        "length": None,
    }


def _open_once_read(fifo, timeout=10.0) -> int:
    """Open `fifo` for writing as soon as someone opens it to read: the moment the injector
    first looks for locust's window marker."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:  # ENXIO: no reader yet
            assert exc.errno == errno.ENXIO, exc
            assert time.monotonic() < deadline, "the injector never looked for the window"
            time.sleep(0.01)


def test_the_injector_waits_for_the_measured_window_then_sends_each_fault_on_time(tmp_path):
    plan = [
        PlannedFault(0, 0, 0.2, Fault("sigkill", every=1), 0.5),
        PlannedFault(1, 0, 0.5, Fault("sigkill", every=1), 0.1),
    ]
    sent: list[tuple[float, dict]] = []
    both = threading.Event()

    def send(command):
        sent.append((time.time(), command))
        if len(sent) == 2:
            both.set()

    skipped: list[tuple[PlannedFault, str]] = []
    # The marker is a FIFO: the injector's read of it blocks until the window is written.
    marker = tmp_path / "measuring.json"
    os.mkfifo(marker)
    injector = FaultInjector(plan, send, tmp_path, lambda f, r: skipped.append((f, r)))
    with injector:
        fd = _open_once_read(marker)
        assert sent == []  # looking for the window: nothing was due, nothing was sent
        origin = time.time()
        os.write(fd, json.dumps({"measure_start": origin}).encode())
        os.close(fd)
        assert both.wait(10), f"sent {sent}"
    assert [c["id"] for _, c in sent] == [0, 1] and skipped == []
    for (at, _), planned in zip(sent, plan, strict=True):
        assert at - origin == pytest.approx(planned.offset, abs=0.15)


def test_faults_not_sent_are_reported_as_skipped(tmp_path):
    plan = [PlannedFault(i, 0, 0.05 * i, Fault("sigkill", every=1), 0.0) for i in range(3)]

    def gone(command):
        raise TargetError("target control channel closed")

    skipped: list[tuple[int, str]] = []
    all_three = threading.Event()

    def skip(fault, reason):
        skipped.append((fault.id, reason))
        if len(skipped) == 3:
            all_three.set()

    (tmp_path / "measuring.json").write_text(json.dumps({"measure_start": time.time()}))
    with FaultInjector(plan, gone, tmp_path, skip):
        assert all_three.wait(10), f"skipped {skipped}"
    assert [i for i, _ in skipped] == [0, 1, 2]
    assert skipped[0][1] == "the target did not take it: target control channel closed"

    late: list[int] = []
    never = tmp_path / "never"
    never.mkdir()
    with FaultInjector(plan, lambda c: None, never, lambda f, r: late.append(f.id)):
        pass  # the load ends before locust ever marked its window
    assert late == [0, 1, 2]
