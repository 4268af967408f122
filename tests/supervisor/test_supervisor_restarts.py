"""Keeping N workers alive: SIGKILLs, restart delays, the restart limit, boot failures."""

import os
import signal
import time

import psutil
import pytest
from conftest import pid_alive
from sup_scripts import script

pytestmark = pytest.mark.timeout(40)


def gaps(p, slot=None):
    """(delay scheduled, measured exit → next spawn) per restart, from the primary's clock."""
    recs = [r for r in p.records() if slot is None or r.get("slot") == slot]
    out = []
    for i, r in enumerate(recs):
        if r["tag"] != "scheduled":
            continue
        exit_t = max(x["t"] for x in recs[:i] if x["tag"] == "exit")
        spawn = next(x for x in recs[i:] if x["tag"] == "spawn")
        out.append((r["delay"], spawn["t"] - exit_t))
    return out


def test_keeps_n_alive_after_sigkills(start_primary, free_tcp_port):
    p = start_primary(
        script("workers=2, restart=RestartPolicy.immediate(max_restarts=10)", style="run"),
        env={"PORT": str(free_tcp_port)},
    )
    first = p.wait_for("ready", count=2)
    for k, victim in enumerate(first):
        os.kill(victim["wpid"], signal.SIGKILL)
        p.wait_for("ready", count=3 + k)
    ready = p.wait_for("ready", count=4)
    exits = p.records("exit")
    assert [e["kind"] for e in exits] == ["crash", "crash"]
    assert all(e["signal"] == "SIGKILL" for e in exits)
    live = [r["wpid"] for r in ready[2:]]
    assert all(pid_alive(pid) for pid in live)
    assert {r["slot"] for r in ready[2:]} == {0, 1}
    p.send_signal(signal.SIGTERM)  # the cluster's own shutdown: no restart after it
    assert p.wait(15) == 143
    assert not p.records("scheduled")[2:]


@pytest.mark.parametrize(
    "policy,expect",
    [
        ("RestartPolicy.immediate(max_restarts=4, within=30)", "immediate"),
        (
            "RestartPolicy.backoff(base=0.1, factor=2, cap=1, jitter=False, max_restarts=4, "
            "within=30)",
            "growing",
        ),
        (
            "RestartPolicy.backoff(base=0.2, factor=2, cap=1, seed=3, max_restarts=4, within=30)",
            "jitter",
        ),
    ],
)
def test_restart_delays(run_primary, free_tcp_port, policy, expect):
    res = run_primary(
        script(f"workers=1, restart={policy}, on_limit='stop', env={{'MODE': 'boot_fail'}}"),
        env={"PORT": str(free_tcp_port)},
        timeout=30,
    )
    res.check(1)
    measured = gaps(res._p)
    assert len(measured) == 4, res.output()
    slack = 0.25  # a fork plus a busy shared machine
    for n, (delay, gap) in enumerate(measured):
        assert delay - 0.01 <= gap <= delay + slack, (n, delay, gap)
        if expect == "immediate":
            assert delay == 0
        elif expect == "growing":
            assert delay == pytest.approx(0.1 * 2**n)
        else:
            assert 0 <= delay <= min(1, 0.2 * 2**n)
    if expect == "growing":
        assert all(b[1] > a[1] for a, b in zip(measured, measured[1:], strict=False))


def test_crash_loop_backs_off_then_stops_at_the_limit_without_spinning(
    start_primary, free_tcp_port
):
    """Slot 1 fails at boot for ever, slot 0 serves; after the limit the primary idles."""
    p = start_primary(
        script(
            "workers=2, on_limit='keep', env=lambda slot: {'MODE': ['serve', 'boot_fail'][slot]}, "
            "restart=RestartPolicy.backoff(base=0.1, factor=2, cap=2, jitter=False, "
            "max_restarts=4, within=60)"
        ),
        env={"PORT": str(free_tcp_port)},
    )
    limit = p.wait_for("limit", timeout=20)[0]
    first = p.records("scheduled")[0]
    # The primary's own CPU during the crash loop (forks included): far from a spin.
    busy = (limit["cpu"] - first["cpu"]) / (limit["t"] - first["t"])
    assert busy < 0.25, busy
    assert limit["restarts_in_window"] == 4 and limit["max_restarts"] == 4
    assert limit["boot_failures"] == 5 and limit["crashes"] == 0
    delays = [r["delay"] for r in p.records("scheduled")]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8])
    # After the limit: no more restarts, the healthy worker stays, the primary sleeps.
    proc = psutil.Process(p.pid)
    before = proc.cpu_times()
    time.sleep(1.0)
    after = proc.cpu_times()
    assert (after.user + after.system) - (before.user + before.system) < 0.05
    assert len(p.records("spawn")) == 6
    assert pid_alive(p.one("ready")["wpid"])
    p.wait_for_text("restart limit reached (4 restarts within 60s, limit 4)", stream="stderr")
    assert p.stderr.count("restart limit reached") == 1
    p.send_signal(signal.SIGUSR1)
    assert p.wait(15) == 0
    assert p.one("stopped")["stats"]["boot_failure"] == 5


def test_boot_failure_vs_crash(start_primary, free_tcp_port):
    p = start_primary(
        script(
            "workers=3, restart=RestartPolicy.never(), "
            "env=lambda slot: {'MODE': ['boot_fail', 'crash', 'serve'][slot]}"
        ),
        env={"PORT": str(free_tcp_port)},
    )
    p.wait_for("exit", count=2)
    kinds = {e["slot"]: (e["kind"], e["code"]) for e in p.records("exit")}
    assert kinds == {0: ("boot_failure", 3), 1: ("crash", 5)}
    assert [r["slot"] for r in p.records("ready")].count(0) == 0
    assert not p.records("scheduled")  # never: no restart
    p.send_signal(signal.SIGUSR1)
    assert p.wait(15) == 0
    stopped = p.one("stopped")
    assert stopped["stats"]["boot_failure"] == 1 and stopped["stats"]["crash"] == 1
    assert stopped["stats"]["clean"] == 1  # the server slot, stopped gracefully


def test_plain_script_keeps_restarting_while_no_worker_is_alive(run_primary, free_tcp_port):
    """`sup.start()` and the main script ends: backoff waits with zero workers alive must not
    let the cluster's loop end the primary; the limit ends it."""
    res = run_primary(
        script(
            "workers=1, env={'MODE': 'boot_fail'}, restart=RestartPolicy.backoff(base=0.2, "
            "jitter=False, max_restarts=2, within=30)",
            style="start",
        ),
        env={"PORT": str(free_tcp_port)},
        timeout=20,
    )
    res.check(0)
    assert len(res.records("spawn")) == 3
    assert res.one("limit")["restarts_in_window"] == 2
    assert res.one("stopped")["status"] == 1
