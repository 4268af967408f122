"""Keeping N workers alive: SIGKILLs, restart delays, the restart limit, boot failures."""

import os
import random
import signal

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
def expected_delays(expect: str, n: int = 4) -> list[float]:
    """The delays each policy of test_restart_delays promises, computed here."""
    if expect == "immediate":
        return [0.0] * n
    if expect == "growing":  # base 0.1, factor 2, cap 1, no jitter
        return [min(1.0, 0.1 * 2**k) for k in range(n)]
    # full jitter ("AWS"), seeded: uniform in [0, min(cap, base * factor**attempt)]
    rng = random.Random(3)
    return [rng.uniform(0.0, min(1.0, 0.2 * 2**k)) for k in range(n)]


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
    expected = expected_delays(expect)
    assert [delay for delay, _ in measured] == pytest.approx(expected)
    if expect == "jitter":
        assert all(d > 0 for d in expected) and len(set(expected)) == 4
    # the wait itself, on the primary's clock: never shorter than promised
    slack = 0.25  # a fork plus a busy shared machine
    for n, ((_, gap), want) in enumerate(zip(measured, expected, strict=True)):
        assert want - 0.01 <= gap <= want + slack, (n, want, gap)


def test_crash_loop_backs_off_then_stops_at_the_limit_without_spinning(
    start_primary, free_tcp_port
):
    """Slot 1 fails at boot for ever, slot 0 serves; after the limit the primary idles.

    "Without spinning" is counted, not timed: the primary's loop turns (each wait in its
    selector) during the crash loop and after the limit."""
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
    # A restart is a handful of loop turns (the timer, the fork, the worker's exit and its
    # channel's end); a loop that polled or spun through the 1.5 s of back-off would make
    # hundreds to tens of thousands.
    turns = limit["turns"] - first["turns"]
    assert 4 <= turns <= 4 * 15, f"{turns} loop turns for 4 restarts"
    assert limit["restarts_in_window"] == 4 and limit["max_restarts"] == 4
    assert limit["boot_failures"] == 5 and limit["crashes"] == 0
    delays = [r["delay"] for r in p.records("scheduled")]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8])
    # After the limit: no more restarts, the healthy worker stays, the primary's loop waits
    # for nothing. The probe (SIGUSR2) comes after the checks below: whatever time they take,
    # an idle loop turns only to take the signal.
    p.wait_for_text("restart limit reached (4 restarts within 60s, limit 4)", stream="stderr")
    assert p.stderr.count("restart limit reached") == 1
    assert pid_alive(p.one("ready")["wpid"])
    p.send_signal(signal.SIGUSR2)
    probe = p.wait_for("probe")[0]
    assert probe["turns"] - limit["turns"] <= 3, (limit, probe)
    assert len(p.records("spawn")) == 6
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
