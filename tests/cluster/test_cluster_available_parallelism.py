"""available_parallelism(): affinity mask capped by a cgroup CPU quota, at least 1."""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import cpus_allowed

pytestmark = pytest.mark.timeout(30)

PRINT = "from clusterlab import available_parallelism as a; print(a())"


def _run(code: str, preexec=None) -> int:
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=20, preexec_fn=preexec
    )
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip().splitlines()[-1])


def test_available_parallelism_is_the_affinity_count_capped_by_the_quota():
    assert _run(PRINT) == cpus_allowed()  # read from the OS by the test itself


def test_available_parallelism_is_importable_as_the_readme_shows():
    # README: `from clusterlab import cluster, available_parallelism`; the one function of
    # clusterlab._parallelism, exported by the package
    code = (
        "import clusterlab, clusterlab._parallelism as m\n"
        "from clusterlab import cluster, available_parallelism as a\n"
        "print(int(a is m.available_parallelism and 'available_parallelism' in clusterlab.__all__"
        " and type(a()) is int))"
    )
    assert _run(code) == 1


def test_available_parallelism_honours_restricted_affinity():
    cpu = min(os.sched_getaffinity(0))
    code = f"import os; os.sched_setaffinity(0, {{{cpu}}}); " + PRINT
    assert _run(code) == 1


def test_available_parallelism_honours_two_cpu_affinity():
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs at least 2 CPUs")
    code = f"import os; os.sched_setaffinity(0, {set(cpus[:2])!r}); " + PRINT
    assert _run(code) == 2


def _cgroup_v1_cpu_dir() -> Path | None:
    base = Path("/sys/fs/cgroup/cpu")
    if not (base / "cpu.cfs_quota_us").exists():
        return None
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if "cpu" in controllers.split(","):
                return base / path.lstrip("/")
    except OSError:
        return None
    return None


def _cgroup_v2_dir() -> Path | None:
    for base in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
        if (base / "cgroup.controllers").exists():
            try:
                for line in Path("/proc/self/cgroup").read_text().splitlines():
                    if line.startswith("0::"):
                        d = base / line[3:].lstrip("/")
                        if (
                            "cpu" in (d / "cgroup.subtree_control").read_text().split()
                            or "cpu" in (d / "cgroup.controllers").read_text().split()
                        ):
                            return d
            except OSError:
                return None
    return None


def test_available_parallelism_honours_cgroup_cpu_quota():
    """A worker-sized cgroup with a 1-CPU quota makes available_parallelism() return 1."""
    if os.geteuid() != 0:
        pytest.skip("creating a cgroup needs root")
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("with one CPU the quota cap cannot be told apart from the affinity")
    name = f"clusterlab-test-{uuid.uuid4().hex[:8]}"
    v1 = _cgroup_v1_cpu_dir()
    group: Path | None = None
    try:
        if v1 is not None:
            group = v1 / name
            group.mkdir()
            (group / "cpu.cfs_period_us").write_text("100000")
            (group / "cpu.cfs_quota_us").write_text("100000")
        else:
            v2 = _cgroup_v2_dir()
            if v2 is None:
                pytest.skip("no writable cgroup cpu controller")
            group = v2 / name
            group.mkdir()
            (group / "cpu.max").write_text("100000 100000")
    except OSError as e:
        if group is not None and group.exists():
            group.rmdir()
        pytest.skip(f"cannot create a cgroup with a CPU quota here: {e}")
    procs = group / "cgroup.procs"

    def enter_group():
        procs.write_text(str(os.getpid()))

    try:
        assert _run(PRINT, preexec=enter_group) == 1
    finally:
        group.rmdir()
