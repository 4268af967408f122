"""examples/supervised.py runs as its docstring says."""

import http.client
import re
import time
from pathlib import Path

import pytest
from conftest import pid_alive

from clusterlab import available_parallelism

pytestmark = pytest.mark.timeout(40)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "supervised.py"


def _get(port, path="/"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def _worker_pids(port, workers):
    """The pids the workers name in their answers; round-robin reaches each in turn."""
    pids = set()
    for _ in range(2 * workers):
        status, body = _get(port)
        assert status == 200, body
        pids.add(int(re.fullmatch(r"hello from worker \d+ \(pid (\d+)\)\n", body).group(1)))
    return pids


def _wait_ready_lines(p, count, timeout=10):
    deadline = time.monotonic() + timeout
    while p.stdout.count("ready in slot") < count:
        assert time.monotonic() < deadline, f"fewer than {count} ready lines\n{p.output()}"
        time.sleep(0.05)


def test_supervised_example_restarts_crashed_and_hung_workers(start_primary, free_tcp_port):
    workers = max(2, available_parallelism())  # the example's own count
    p = start_primary(
        script=EXAMPLE, cwd=EXAMPLE.parent, env={"PORT": str(free_tcp_port), "RUN_FOR": "4"}
    )
    _wait_ready_lines(p, workers)
    pids = _worker_pids(free_tcp_port, workers)
    assert len(pids) == workers
    # The answering worker exits at once: the connection ends without an answer...
    with pytest.raises(http.client.RemoteDisconnected):
        _get(free_tcp_port, "/crash")
    p.wait_for_text("exited: crash (code=1", timeout=5)
    # ...and, in the OS's view, exactly one of the workers is gone.
    assert len([pid for pid in pids if not pid_alive(pid)]) == 1
    p.wait_for_text("restart in", timeout=5)
    _wait_ready_lines(p, workers + 1)  # every slot serving again
    conn = http.client.HTTPConnection("127.0.0.1", free_tcp_port, timeout=5)
    conn.request("GET", "/hang")  # no answer: the worker is stopped
    t0 = time.monotonic()
    p.wait_for_text("killed", timeout=5)
    conn.close()
    assert time.monotonic() - t0 < 2 + 1.5
    p.wait_for_text("exited: hang (code=None, signal=SIGKILL)", timeout=5)
    assert p.wait(15) == 0, p.output()
    assert re.search(r"stopped with status 0; .*'crash': 1, .*'hang': 1", p.stdout), p.output()
