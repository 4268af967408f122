"""Shared fixtures: run a cluster primary script as a real process, and make sure no test leaves a
process behind.

The pytest process becomes a child subreaper, so a worker orphaned by its primary is reparented to
pytest (not to init): the after-test check can then see it, reap it, and name it.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import psutil
import pytest

_PR_SET_CHILD_SUBREAPER = 36


def _become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_CHILD_SUBREAPER) failed: {os.strerror(err)}")


if sys.platform.startswith("linux"):
    _become_subreaper()

# A suite started in the background by a shell without job control (`make test &`, some CI
# runners) inherits SIGINT ignored, and ignored signals stay ignored across exec: every process a
# test starts would then ignore the Ctrl-C the test sends. Restore what a terminal gives.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


# tools/mutate.py runs the tests in a mutated copy of the tree: they must test that copy.
if os.environ.get("CLUSTERLAB_MUTANT_ROOT"):
    import clusterlab

    _mutant = Path(os.environ["CLUSTERLAB_MUTANT_ROOT"]).resolve()
    if not Path(clusterlab.__file__).resolve().is_relative_to(_mutant):
        raise pytest.UsageError(f"clusterlab imported from {clusterlab.__file__}, not {_mutant}")


# --------------------------------------------------------------------------------------------
# No process left behind
# --------------------------------------------------------------------------------------------


def _reap_zombie_children() -> None:
    """Reap every exited direct child (orphaned workers reparented to us included)."""
    for child in psutil.Process().children(recursive=False):
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(child.pid, os.WNOHANG)
        except (psutil.NoSuchProcess, ChildProcessError, ProcessLookupError):
            pass


def _identity(proc: psutil.Process) -> tuple[int, float]:
    try:
        return proc.pid, proc.create_time()
    except psutil.NoSuchProcess:
        return proc.pid, 0.0


def _alive_descendants(exclude: frozenset[tuple[int, float]] = frozenset()) -> list[psutil.Process]:
    alive = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and _identity(proc) not in exclude:
                alive.append(proc)
        except psutil.NoSuchProcess:
            pass
    return alive


def _describe(proc: psutil.Process) -> str:
    try:
        cmd = " ".join(proc.cmdline()) or proc.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        cmd = "?"
    return f"{proc.pid} {cmd}"


def _kill_pids(pids: Iterable[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_no_descendants(
    timeout: float, exclude: frozenset[tuple[int, float]] = frozenset()
) -> list[psutil.Process]:
    """Reap and poll until no descendant of pytest (but those in `exclude`) is alive or
    `timeout` passes; return the survivors."""
    deadline = time.monotonic() + timeout
    while True:
        _reap_zombie_children()
        alive = _alive_descendants(exclude)
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


@pytest.fixture(autouse=True)
def no_process_left_behind():
    """After each test: every process started during it must be gone within ~3 s, else it is
    killed (by pid) and the test fails naming it. Processes that were already there (owned by a
    wider-scoped fixture) are left alone."""
    before = frozenset(_identity(p) for p in _alive_descendants())
    yield
    survivors = wait_no_descendants(3.0, before)
    if not survivors:
        return
    names = [_describe(p) for p in survivors]
    _kill_pids(p.pid for p in survivors)
    wait_no_descendants(3.0, before)
    pytest.fail("left behind: " + "; ".join(names), pytrace=False)


# --------------------------------------------------------------------------------------------
# Running a primary script
# --------------------------------------------------------------------------------------------

# Prepended to every script (unless prelude=False). Both the primary and its workers run it.
PRELUDE = '''\
import json as _cl_json, os, socket, sys, threading, time
from clusterlab import cluster

_cl_out_lock = threading.Lock()


def out(tag, **kw):
    """One JSON line on stdout, tagged; safe from any thread."""
    kw = {"tag": tag, "pid": os.getpid(), **kw}
    line = _cl_json.dumps(kw, default=repr) + "\\n"
    with _cl_out_lock:
        sys.stdout.write(line)
        sys.stdout.flush()


def serve_pid(sock, count=None):
    """Accept on `sock`; answer each connection with this process's pid and close it.

    Returns once `count` connections were served or the socket was closed (a disconnect
    closes the worker's cluster listeners); polls so that a blocking accept() never hides it.
    """
    n = 0
    sock.settimeout(0.1)
    while count is None or n < count:
        if sock.fileno() < 0:
            return n
        try:
            conn, _ = sock.accept()
        except TimeoutError:
            continue
        except OSError:
            return n
        with conn:
            conn.settimeout(5)
            conn.sendall(f"{os.getpid()}\\n".encode())
        n += 1
    return n


def wait_disconnect(timeout=15.0):
    """In a worker: block until this worker's channel is disconnected (or `timeout`)."""
    ev = threading.Event()
    cluster.worker.on("disconnect", ev.set)
    if cluster.worker.is_connected():
        ev.wait(timeout)


READY = "__ready__"


def when_ready(w, fn):
    """Primary: call fn() once worker `w` has said ready() (its listeners are attached)."""
    def on_message(m, h):
        if m == READY:
            w.off("message", on_message)
            fn()
    w.on("message", on_message)


def ready():
    """Worker: tell the primary that this worker's listeners are attached."""
    cluster.worker.send(READY)


def fetch(port, host="127.0.0.1", family=socket.AF_INET, timeout=5.0, payload=b""):
    """Connect, optionally send, read to EOF; return the text."""
    with socket.socket(family, socket.SOCK_STREAM) as c:
        c.settimeout(timeout)
        c.connect((host, port) if family != socket.AF_UNIX else host)
        if payload:
            c.sendall(payload)
        chunks = []
        while True:
            b = c.recv(65536)
            if not b:
                break
            chunks.append(b)
    return b"".join(chunks).decode()

'''


# Primary scripts that run a Supervisor: `record(sup)` prints every supervisor event as a
# record (with monotonic time, the primary's CPU time and its loop's turns so far); needs
# `import asyncio, dataclasses`.
SUPERVISOR_RECORD = """
_TURNS = [0]


def count_turns():
    \"\"\"Count the running loop's turns (one per wait in its selector): an idle loop makes
    none, one that spins or polls makes hundreds to thousands a second. A plain script's loop is
    not running yet when it records: its turns stay 0.\"\"\"
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    selector = loop._selector
    select = selector.select

    def counting(timeout=None):
        _TURNS[0] += 1
        return select(timeout)

    selector.select = counting


def now():
    return {"t": time.monotonic(), "cpu": time.process_time(), "turns": _TURNS[0]}


def record(sup):
    count_turns()
    sup.on("spawn", lambda sw: out("spawn", slot=sw.slot, id=sw.id, wpid=sw.pid, **now()))
    sup.on("ready", lambda sw, boot: out("ready", slot=sw.slot, id=sw.id, wpid=sw.pid,
                                         boot=boot, **now()))
    sup.on("exit", lambda sw, kind, code, sig: out("exit", slot=sw.slot, id=sw.id, wpid=sw.pid,
                                                   kind=kind, code=code, signal=sig, **now()))
    sup.on("restart_scheduled", lambda slot, delay, attempt, kind: out(
        "scheduled", slot=slot, delay=delay, attempt=attempt, kind=kind, **now()))
    sup.on("restart_limit", lambda lim: out("limit", **dataclasses.asdict(lim), **now()))
    sup.on("hang_detected", lambda sw, silent: out("hang", slot=sw.slot, id=sw.id, wpid=sw.pid,
                                                   silent=silent, **now()))
    sup.on("rolled", lambda n: out("rolled", n=n, **now()))
    sup.on("stopped", lambda status: out("stopped", status=status, stats=sup.stats,
                                         rr=cluster.round_robin_stats(), **now()))
"""


def _clean_env(extra: dict[str, str] | None, start_method: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTERLAB_")}
    env.pop("PYTHONSTARTUP", None)
    # The tests in tests/cluster run once per start method (tests/cluster/conftest.py); elsewhere
    # CLUSTERLAB_TEST_START_METHOD=forkserver runs every primary's workers through a fork server.
    start_method = start_method or os.environ.get("CLUSTERLAB_TEST_START_METHOD")
    if start_method:
        env["CLUSTERLAB_START_METHOD"] = start_method
    if extra:
        env.update(extra)
    return env


class PrimaryProcess:
    """A primary script running in its own session, with its output collected line by line."""

    def __init__(
        self,
        argv: list[str],
        *,
        env: dict[str, str],
        cwd: str | Path,
        input: str | bytes | None = None,
    ) -> None:
        self.argv = argv
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=str(cwd),
            env=env,
            start_new_session=True,
        )
        self.pid = self.proc.pid
        self._cond = threading.Condition()
        self._stdout: list[str] = []
        self._stderr: list[str] = []
        self._eof = {"stdout": False, "stderr": False}
        self._readers = [
            threading.Thread(
                target=self._read, args=(self.proc.stdout, self._stdout, "stdout"), daemon=True
            ),
            threading.Thread(
                target=self._read, args=(self.proc.stderr, self._stderr, "stderr"), daemon=True
            ),
        ]
        for t in self._readers:
            t.start()
        if input is not None:
            data = input.encode() if isinstance(input, str) else input
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(data)
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        self.returncode: int | None = None

    def _read(self, stream, sink: list[str], name: str) -> None:
        for raw in iter(stream.readline, b""):
            with self._cond:
                sink.append(raw.decode(errors="replace"))
                self._cond.notify_all()
        with self._cond:
            self._eof[name] = True
            self._cond.notify_all()

    # -- output -------------------------------------------------------------------------------
    @property
    def stdout(self) -> str:
        with self._cond:
            return "".join(self._stdout)

    @property
    def stderr(self) -> str:
        with self._cond:
            return "".join(self._stderr)

    def records(self, tag: str | None = None) -> list[dict[str, Any]]:
        """The JSON-object lines of stdout (those printed with `out`), optionally of one tag."""
        with self._cond:
            lines = list(self._stdout)
        return _parse_records(lines, tag)

    def one(self, tag: str) -> dict[str, Any]:
        recs = self.records(tag)
        assert len(recs) == 1, f"expected exactly one {tag!r} record, got {recs}\n{self.output()}"
        return recs[0]

    def output(self) -> str:
        return (
            f"--- argv: {self.argv}\n--- returncode: {self.returncode}\n"
            f"--- stdout:\n{self.stdout}--- stderr:\n{self.stderr}---"
        )

    # -- waiting ------------------------------------------------------------------------------
    def wait_for(
        self, tag: str | Callable[[dict[str, Any]], bool], timeout: float = 10.0, count: int = 1
    ) -> list[dict[str, Any]]:
        """Wait until `count` records match (`tag` string or predicate); return them."""
        pred = (lambda r: r.get("tag") == tag) if isinstance(tag, str) else tag
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [r for r in _parse_records(self._stdout, None) if pred(r)]
                if len(found) >= count:
                    return found[:count]
                if self._eof["stdout"] and self.proc.poll() is not None:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.1))
        raise AssertionError(f"timed out waiting for {count} x {tag!r}\n{self.output()}")

    def wait_for_text(self, text: str, timeout: float = 10.0, stream: str = "stdout") -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                sink = self._stdout if stream == "stdout" else self._stderr
                if text in "".join(sink):
                    return
                left = deadline - time.monotonic()
                if left <= 0 or (self._eof[stream] and self.proc.poll() is not None):
                    break
                self._cond.wait(min(left, 0.1))
        raise AssertionError(f"timed out waiting for {text!r} on {stream}\n{self.output()}")

    def wait(self, timeout: float = 20.0) -> int:
        """Wait for the primary to exit (killing its tree on timeout and failing the test)."""
        try:
            self.returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_tree()
            self.returncode = self.proc.wait(5)
            self._join_readers(2.0)
            pytest.fail(
                f"primary did not exit within {timeout}s; killed its tree\n{self.output()}",
                pytrace=False,
            )
        # A worker still holding the pipes would keep the readers waiting; the leftover check
        # (no_process_left_behind) names such a worker, so do not block on it here.
        self._join_readers(3.0)
        return self.returncode

    def _join_readers(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for t in self._readers:
            t.join(max(0.0, deadline - time.monotonic()))

    def send_signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def tree_pids(self) -> list[int]:
        """The primary and every live process of its session or below it."""
        pids = {self.pid}
        try:
            pids.update(p.pid for p in psutil.Process(self.pid).children(recursive=True))
        except psutil.NoSuchProcess:
            pass
        for p in psutil.process_iter():
            try:
                if os.getsid(p.pid) == self.pid:
                    pids.add(p.pid)
            except (ProcessLookupError, PermissionError):
                pass
        return sorted(pids)

    def kill_tree(self) -> None:
        _kill_pids(self.tree_pids())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill_tree()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        for s in (self.proc.stdout, self.proc.stderr):
            try:
                s.close()
            except Exception:
                pass


def _parse_records(lines: Iterable[str], tag: str | None) -> list[dict[str, Any]]:
    recs = []
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and (tag is None or rec.get("tag") == tag):
            recs.append(rec)
    return recs


class Result:
    """What a finished primary left: returncode, stdout, stderr, and record helpers."""

    def __init__(self, primary: PrimaryProcess) -> None:
        self._p = primary
        self.returncode = primary.returncode
        self.stdout = primary.stdout
        self.stderr = primary.stderr
        self.pid = primary.pid

    def records(self, tag: str | None = None) -> list[dict[str, Any]]:
        return self._p.records(tag)

    def one(self, tag: str) -> dict[str, Any]:
        return self._p.one(tag)

    def tags(self, who: str | None = None) -> list[str]:
        """The tags in output order, optionally only records whose 'who' is `who`."""
        return [r["tag"] for r in self.records() if who is None or r.get("who") == who]

    @property
    def lines(self) -> list[str]:
        return self.stdout.splitlines()

    def output(self) -> str:
        return self._p.output()

    def check(self, returncode: int = 0) -> Result:
        assert self.returncode == returncode, (
            f"primary exited {self.returncode}, expected {returncode}\n{self.output()}"
        )
        return self

    def __str__(self) -> str:
        return self.output()


def _write_script(directory: Path, source: str, prelude: bool, name: str = "primary.py") -> Path:
    body = textwrap.dedent(source)
    path = directory / name
    path.write_text((PRELUDE + "\n" if prelude else "") + body)
    return path


#: Folders whose tests only wait on their own processes: `make test` runs them 3 at a time.
#: Every other test runs alone afterwards (marked ``alone`` here) unless its module says
#: ``pytestmark = pytest.mark.parallel_ok``: the lab's trust checks read the whole machine's CPU,
#: and a busy machine is a verdict there, so a lab test is alone unless it starts no load (it
#: reads recorded runs, refuses bad input, renders reports).
PARALLEL_FOLDERS = ("cluster", "supervisor", "reliability", "bench")
_TESTS = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        folder = item.path.relative_to(_TESTS).parts[0]
        if folder not in PARALLEL_FOLDERS and item.get_closest_marker("parallel_ok") is None:
            item.add_marker(pytest.mark.alone)


#: The start methods every test of tests/cluster that starts a primary runs under: workers spawned
#: by exec (a fresh interpreter, Node's way) and forked from the fork server's template. A test that
#: holds for some only says so with ``@pytest.mark.start_methods("exec")``.
START_METHODS = ("exec", "forkserver")
_CLUSTER_TESTS = Path(__file__).parent / "cluster"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "start_method" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("start_methods")
    if marker is None and _CLUSTER_TESTS not in metafunc.definition.path.parents:
        return
    methods = marker.args if marker is not None else START_METHODS
    unknown = set(methods) - set(START_METHODS)
    if unknown:
        raise ValueError(f"unknown start methods {sorted(unknown)}: use {START_METHODS}")
    metafunc.parametrize("start_method", methods, indirect=True)


@pytest.fixture
def start_method(request: pytest.FixtureRequest) -> str | None:
    """How this test's primaries start their workers: "exec" or "forkserver" where the test is
    parametrised over both (every test of tests/cluster that starts a primary), else None (the
    primary's default, or CLUSTERLAB_TEST_START_METHOD)."""
    return getattr(request, "param", None)


@pytest.fixture
def start_primary(tmp_path, start_method):
    """Start a primary script in the background; returns a PrimaryProcess (closed at teardown).

    Arguments: source (dedented; PRELUDE prepended unless prelude=False), env (added to a clean
    environment without CLUSTERLAB_* variables), args (script arguments), python_args
    (interpreter options), cwd (default tmp_path), script_dir (default tmp_path), input,
    module (run `python -m module` instead of a script; source is then ignored).
    """
    started: list[PrimaryProcess] = []

    def start(
        source: str = "",
        *,
        env: dict[str, str] | None = None,
        args: Iterable[str] = (),
        python_args: Iterable[str] = (),
        cwd: str | Path | None = None,
        script_dir: str | Path | None = None,
        input: str | bytes | None = None,
        prelude: bool = True,
        module: str | None = None,
        script: str | Path | None = None,
    ) -> PrimaryProcess:
        if module is not None:
            argv = [sys.executable, *python_args, "-m", module, *args]
        elif script is not None:
            argv = [sys.executable, *python_args, str(script), *args]
        else:
            script = _write_script(Path(script_dir or tmp_path), source, prelude)
            argv = [sys.executable, *python_args, str(script), *args]
        p = PrimaryProcess(
            argv, env=_clean_env(env, start_method), cwd=cwd or tmp_path, input=input
        )
        started.append(p)
        return p

    yield start
    for p in started:
        p.close()
        # captured by pytest, shown only when the test fails
        print(f"=== primary {p.pid} ===\n{p.output()}")


@pytest.fixture
def run_primary(start_primary):
    """Run a primary script to completion (killing its tree after `timeout` s); return a Result."""

    def run(source: str = "", *, timeout: float = 20, **kw: Any) -> Result:
        p = start_primary(source, **kw)
        p.wait(timeout)
        return Result(p)

    return run


# --------------------------------------------------------------------------------------------
# Small helpers for tests
# --------------------------------------------------------------------------------------------


def free_port(
    family: int = socket.AF_INET, host: str = "127.0.0.1", kind: int = socket.SOCK_STREAM
) -> int:
    """A port that was free a moment ago (both TCP and UDP checked for stream ports)."""
    for _ in range(50):
        with socket.socket(family, kind) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        other = socket.SOCK_DGRAM if kind == socket.SOCK_STREAM else socket.SOCK_STREAM
        try:
            with socket.socket(family, other) as s2:
                s2.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port found")


def quiet_port() -> int:
    """A port free a moment ago for TCP on IPv4 and IPv6 alike, below the kernel's ephemeral
    range: no other test's ``bind(('', 0))`` or outgoing connection can be given it, even in a
    parallel run (an IPv6-only listener leaves its port free for anyone's IPv4 bind)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(50):
        port = random.randrange(max(1024, low - 12_000), low)
        try:
            with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                s.bind(("::", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port found below the ephemeral range")


def has_ipv6() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def cpu_quota_cpus() -> int | None:
    """This process's cgroup CPU quota in whole CPUs (rounded up), read here from the cgroup
    files (v1: the cpu controller's own group; v2: its group and every group above it); None
    when no quota applies. The tests' own reading, to check available_parallelism() against."""
    limits = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, rel = line.split(":", 2)
        if controllers == "":
            group = Path("/sys/fs/cgroup") / rel.lstrip("/")
            while group.is_relative_to("/sys/fs/cgroup"):
                try:
                    quota, period = (group / "cpu.max").read_text().split()
                    if quota != "max":
                        limits.append(int(quota) / int(period))
                except (OSError, ValueError):
                    pass
                if group == Path("/sys/fs/cgroup"):
                    break
                group = group.parent
        elif "cpu" in controllers.split(","):
            for mount in (Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup/cpu,cpuacct")):
                try:
                    quota = int((mount / rel.lstrip("/") / "cpu.cfs_quota_us").read_text())
                    period = int((mount / rel.lstrip("/") / "cpu.cfs_period_us").read_text())
                except (OSError, ValueError):
                    continue
                if quota > 0:
                    limits.append(quota / period)
                break
    return max(1, math.ceil(min(limits) - 1e-9)) if limits else None


def cpus_allowed() -> int:
    """The CPUs this process may use, from the OS: its affinity, capped by its cgroup quota."""
    cpus = len(os.sched_getaffinity(0))
    quota = cpu_quota_cpus()
    return max(1, min(cpus, quota) if quota is not None else cpus)


def pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def free_tcp_port() -> int:
    return free_port()


# --- the lab tests' counting server (tests/lab/counting_server.py) ---------------------------


class CountingServer:
    """A real loopback HTTP server (a plain stdlib one) that counts the requests it serves."""

    def __init__(self, process: subprocess.Popen, port: int) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def counts(self) -> dict:
        import urllib.request

        with urllib.request.urlopen(self.url + "/count", timeout=5) as response:
            return json.loads(response.read())


@pytest.fixture
def counting_server():
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "lab" / "counting_server.py"), "0", "w-test"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = int(process.stdout.readline())
        yield CountingServer(process, port)
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stdout.close()
