"""The examples in examples/ run as documented."""

import http.client
import re
import signal
import socket
import time
from pathlib import Path

import pytest
from conftest import wait_no_descendants

pytestmark = pytest.mark.timeout(30)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _example(name: str) -> Path:
    path = EXAMPLES / name
    if not path.exists():
        pytest.fail(f"missing example {path}")
    return path


def _port_free(port: int) -> bool:
    for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                # SO_REUSEADDR: connections in TIME_WAIT do not count, a listener does
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((host, port))
                s.listen()
        except OSError as e:
            if family == socket.AF_INET6 and e.errno in (97, 99):  # no IPv6 here
                continue
            return False
    return True


def _get(port: int, host: str = "localhost") -> tuple[int, str]:
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def test_hello_cluster_answers_from_every_worker_and_ctrl_c_leaves_nothing(start_primary):
    if not _port_free(8000):
        pytest.skip("port 8000 is busy")
    path = _example("hello_cluster.py")
    p = start_primary(script=path, cwd=EXAMPLES)
    p.wait_for_text("is running", timeout=10)
    deadline = time.monotonic() + 15
    while True:
        listening = re.findall(r"worker (\d+) listening on port (\d+)", p.stdout)
        workers = {int(w) for w, _ in listening}
        if workers and len(workers) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert listening, p.output()
    assert {int(port) for _, port in listening} == {8000}
    seen = set()
    for _ in range(60):
        status, body = _get(8000)
        assert status == 200 and body.startswith("hello world"), body
        m = re.search(r"pid (\d+)", body)
        assert m, body
        seen.add(int(m.group(1)))
        if len(seen) == len(workers):
            break
    assert len(seen) == len(workers), f"answers from {seen}, workers {workers}"
    p.send_signal(signal.SIGINT)
    assert p.wait(15) == 130, p.output()
    assert wait_no_descendants(3.0) == []
    assert _port_free(8000), "port 8000 still held after Ctrl-C"


def test_messaging_example_runs_to_completion(run_primary):
    path = _example("messaging.py")
    r = run_primary(script=path, cwd=EXAMPLES).check()
    says = re.findall(r"worker (\d+) \(pid \d+\) says (\d+)² = (\d+)", r.stdout)
    assert sorted((int(w), int(n), int(sq)) for w, n, sq in says) == [
        (1, 10, 100),
        (2, 20, 400),
        (3, 30, 900),
    ], r.output()
    assert "all done: [(1, 100), (2, 400), (3, 900)]" in r.stdout


def test_respawn_example_replaces_the_crashed_worker(run_primary):
    path = _example("respawn.py")
    r = run_primary(script=path, cwd=EXAMPLES, env={"RUN_FOR": "2"}).check()
    out = r.stdout
    assert "worker 1 crashing" in out, r.output()
    assert "worker 1 exited (code=3, signal=None)" in out
    assert "forked worker 3 to replace worker 1" in out
    assert "worker 3 is online" in out
    assert "all workers disconnected" in out
    # the replacement and the healthy worker were disconnected, not crashed
    assert re.search(r"worker 2 exited \(code=0, signal=None\)", out)
    assert re.search(r"worker 3 exited \(code=0, signal=None\)", out)
