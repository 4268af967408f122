"""Separate CPUs for load and target (``running.cpus``): the plan from an affinity mask (machines
with 4 and more CPUs given as masks), and a real run whose processes are pinned."""

import os
import subprocess
import sys
import time

import psutil
import pytest

from clusterlab.lab.config.scenario import Cpus
from clusterlab.lab.running.cpus import CpuSplitError, pinned, plan_cpus

pytestmark = pytest.mark.parallel_ok  # starts no load: runs beside the cluster tests


@pytest.mark.parametrize(
    "cpus, load, target",
    [
        (range(4), (3,), (0, 1, 2)),
        (range(8), (6, 7), (0, 1, 2, 3, 4, 5)),
        (range(16), (12, 13, 14, 15), tuple(range(12))),
        ((2, 3, 5, 7, 11), (7, 11), (2, 3, 5)),  # a restricted, gappy mask: ⌈5/4⌉ = 2
    ],
)
def test_auto_splits_from_four_cpus_giving_the_load_a_quarter(cpus, load, target):
    plan = plan_cpus(Cpus(), tuple(cpus))
    assert (plan.load, plan.target, plan.shared) == (load, target, False)
    assert plan.target_parallelism == len(target)


@pytest.mark.parametrize("cpus", [(0,), (0, 1), (0, 1, 2)])
def test_auto_shares_below_four_cpus(cpus):
    plan = plan_cpus(Cpus(), cpus)
    assert plan.shared and plan.load == plan.target == cpus
    assert plan.describe().startswith(f"load and target share the {len(cpus)} CPUs")


def test_off_shares_and_on_splits_whatever_the_count():
    assert plan_cpus(Cpus(split="off"), range(16)).shared
    plan = plan_cpus(Cpus(split="on"), (0, 1))
    assert (plan.load, plan.target) == ((1,), (0,))
    assert plan_cpus(Cpus(split="on", load=3), range(8)).load == (5, 6, 7)


@pytest.mark.parametrize("cpus, load", [((0,), None), ((0, 1), 2), ((0, 1, 2, 3), 4)])
def test_a_split_that_leaves_a_side_without_cpus_is_refused_in_one_line(cpus, load):
    with pytest.raises(CpuSplitError, match=r"^cpus\.load: expected from 1 to") as err:
        plan_cpus(Cpus(split="on", load=load), cpus)
    assert "\n" not in str(err.value)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs to pin apart")
def test_a_pinned_command_and_everything_it_starts_run_on_the_given_cpus():
    cpu = max(os.sched_getaffinity(0))
    child = "import subprocess,sys,time; subprocess.run([sys.executable,'-c','import time; time.sleep(5)'])"
    proc = subprocess.Popen(pinned([sys.executable, "-c", child], (cpu,)))
    try:
        parent = psutil.Process(proc.pid)
        grandchild = None
        for _ in range(100):
            kids = parent.children()
            if kids:
                grandchild = kids[0]
                break
            time.sleep(0.05)
        assert grandchild is not None
        assert parent.cpu_affinity() == [cpu] and grandchild.cpu_affinity() == [cpu]
    finally:
        for p in [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]:
            p.kill()
        proc.wait(timeout=5)
