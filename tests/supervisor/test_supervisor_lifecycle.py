"""Hangs, rolling restart under load, graceful shutdown with a grace period."""

import http.client
import os
import signal
import socket
import threading
import time

import pytest
from conftest import pid_alive
from sup_scripts import script

pytestmark = pytest.mark.timeout(40)

HB = "heartbeat=HeartbeatPolicy(interval=0.1, timeout=0.8)"


@pytest.mark.parametrize(
    "mode,how", [("serve", "sigstop"), ("single", "spin"), ("asyncio", "spin")]
)
def test_hung_worker_replaced_within_heartbeat_timeout(start_primary, free_tcp_port, mode, how):
    p = start_primary(
        script(f"workers=1, {HB}, restart=RestartPolicy.immediate(), env={{'MODE': {mode!r}}}"),
        env={"PORT": str(free_tcp_port), "RECORD_BEATS": "1"},
    )
    first = p.wait_for("ready")[0]
    # Heartbeats flowing for longer than the timeout (0.8 s at most one beat each 0.1 s): no
    # false positive meanwhile.
    beats = p.wait_for(lambda r: r["tag"] == "beat" and r["id"] == first["id"], count=10)
    assert beats[-1]["t"] - beats[0]["t"] >= 0.8
    assert not p.records("hang")
    if how == "sigstop":
        os.kill(first["wpid"], signal.SIGSTOP)
    else:
        s = socket.create_connection(("127.0.0.1", free_tcp_port), timeout=2)
        s.sendall(b"GET /spin HTTP/1.0\r\n\r\n")
    hung_at = time.monotonic()
    hang = p.wait_for("hang", timeout=5)[0]
    second = p.wait_for("ready", count=2, timeout=5)[1]
    detected_after = time.monotonic() - hung_at
    assert 0.8 <= hang["silent"] < 0.8 + 0.5
    assert detected_after < 0.8 + 1.0
    ex = p.one("exit")
    assert (ex["kind"], ex["signal"]) == ("hang", "SIGKILL")
    assert second["wpid"] != first["wpid"] and not pid_alive(first["wpid"])
    if how == "spin":
        s.close()
    p.send_signal(signal.SIGUSR1)
    assert p.wait(15) == 0


def _load(port, stop, results):
    """New connection per request until `stop` (at most 3000 requests)."""
    for _ in range(3000):
        if stop.is_set():
            return
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/")
            resp = conn.getresponse()
            body = resp.read()
            results.append((resp.status, body.decode().strip()))
        except Exception as exc:  # noqa: BLE001 - every failure is counted
            results.append((0, repr(exc)))
        finally:
            conn.close()


@pytest.mark.parametrize("policy", ["rr", "none"])
def test_rolling_restart_under_load_fails_no_request(start_primary, free_tcp_port, policy):
    p = start_primary(
        script(f"workers=2, {HB}, grace=5"),
        env={"PORT": str(free_tcp_port), "CLUSTERLAB_SCHED_POLICY": policy},
    )
    old = {r["wpid"] for r in p.wait_for("ready", count=2)}
    stop, results = threading.Event(), []
    loader = threading.Thread(target=_load, args=(free_tcp_port, stop, results))
    loader.start()
    try:
        time.sleep(0.3)
        p.send_signal(signal.SIGHUP)
        p.wait_for("rolled", timeout=15)
        time.sleep(0.3)
    finally:
        stop.set()
        loader.join(10)
    failed = [r for r in results if r[0] != 200]
    assert not failed, failed[:5]
    ready = p.records("ready")
    new = {r["wpid"] for r in ready[2:]}
    assert len(ready) == 4 and not new & old
    served = {body for _, body in results}
    assert {str(pid) for pid in new} <= served and len(results) > 20
    # Each replacement was ready before its predecessor exited; all exits were clean.
    recs = p.records()
    for r in ready[2:]:
        pred_exit = next(e for e in recs if e["tag"] == "exit" and e["slot"] == r["slot"])
        assert r["t"] < pred_exit["t"]
        assert pred_exit["kind"] == "clean"
    assert p.one("rolled")["n"] == 2
    p.send_signal(signal.SIGUSR1)
    assert p.wait(15) == 0


def test_graceful_stop_kills_a_worker_that_ignores_disconnect(start_primary, free_tcp_port):
    p = start_primary(
        script("workers=2, env=lambda slot: {'MODE': ['stubborn', 'serve'][slot]}"),
        env={"PORT": str(free_tcp_port), "STOP_GRACE": "0.6"},
    )
    p.wait_for("ready", count=2)
    t0 = time.monotonic()
    p.send_signal(signal.SIGUSR1)
    assert p.wait(15) == 0
    took = time.monotonic() - t0
    kinds = {e["slot"]: (e["kind"], e["signal"]) for e in p.records("exit")}
    assert kinds == {0: ("killed", "SIGKILL"), 1: ("clean", None)}
    assert 0.6 <= took < 6.0  # the 0.6 s grace, not the 10 s default; slack for a busy CI box
    assert p.one("status")["status"] == 0
    assert "still there 0.6s after disconnect: SIGKILL" in p.stderr


def test_ctrl_c_on_an_asyncio_primary_stops_gracefully(start_primary, free_tcp_port):
    p = start_primary(script("workers=2"), env={"PORT": str(free_tcp_port)})
    p.wait_for("ready", count=2)
    p.send_signal(signal.SIGINT)
    assert p.wait(15) in (-signal.SIGINT, 130)
    assert [e["kind"] for e in p.records("exit")] == ["clean", "clean"]
    assert p.one("stopped")["status"] == 130
