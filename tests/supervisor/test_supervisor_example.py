"""examples/supervised.py runs as its docstring says."""

import http.client
import re
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(40)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "supervised.py"


def _get(port, path="/"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    except (ConnectionError, http.client.HTTPException):
        return 0, ""
    finally:
        conn.close()


def test_supervised_example_restarts_crashed_and_hung_workers(start_primary, free_tcp_port):
    p = start_primary(
        script=EXAMPLE, cwd=EXAMPLE.parent, env={"PORT": str(free_tcp_port), "RUN_FOR": "4"}
    )
    p.wait_for_text("ready in slot 1", timeout=10)
    status, body = _get(free_tcp_port)
    assert status == 200 and body.startswith("hello from worker"), body
    assert _get(free_tcp_port, "/crash")[0] == 0  # the worker died mid-request
    p.wait_for_text("exited: crash (code=1", timeout=5)
    p.wait_for_text("restart in", timeout=5)
    deadline = time.monotonic() + 10
    while p.stdout.count("ready in slot") < 3 and time.monotonic() < deadline:
        time.sleep(0.05)  # both slots serving again (a lone RR worker's exit closes the port)
    conn = http.client.HTTPConnection("127.0.0.1", free_tcp_port, timeout=5)
    conn.request("GET", "/hang")  # no answer: the worker is stopped
    t0 = time.monotonic()
    p.wait_for_text("killed", timeout=5)
    conn.close()
    assert time.monotonic() - t0 < 2 + 1.5
    p.wait_for_text("exited: hang (code=None, signal=SIGKILL)", timeout=5)
    assert p.wait(15) == 0, p.output()
    assert re.search(r"stopped with status 0; .*'crash': 1, .*'hang': 1", p.stdout), p.output()
