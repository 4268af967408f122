"""Crash loop: a worker that dies at start-up is restarted with growing delays, then the
restart limit stops it with one clear line, and the primary stays near idle throughout (its
loop turns counted; its CPU share reported as a figure)."""

import time

import psutil
import pytest

from .support import env, pick, script

TARGET = "crash loop"
pytestmark = pytest.mark.timeout(pick(40, 90))

# Delays 0.2, 0.4, 0.8, 1.6, then the 2 s cap: the short run waits ~3 s, the long one ~11 s.
LIMIT = pick(4, 8)
TURNS_PER_RESTART = 20  # measured: about 6 (boot_fail) and 9 (crash_after_boot)
BACKOFF = (
    f"RestartPolicy.backoff(base=0.2, factor=2, cap=2, jitter=False, "
    f"max_restarts={LIMIT}, within=120)"
)


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()  # the primary's own: its children's CPU is not in user/system
    return times.user + times.system


@pytest.mark.parametrize(
    "mode,kind", [("boot_fail", "boot_failure"), ("crash_after_boot", "crash")]
)
def test_crash_loop_backs_off_then_stops_at_the_limit_with_the_primary_idle(
    start_primary, free_tcp_port, tmp_path, figure, mode, kind
):
    p = start_primary(
        script(f"workers=1, restart={BACKOFF}, env={{'MODE': {mode!r}}}"),
        env=env(free_tcp_port, tmp_path / "inflight"),
    )
    proc = psutil.Process(p.pid)
    first = p.wait_for("exit", timeout=30)[0]
    # The window: from the first failure to the limit, every back-off delay waited out.
    cpu0, t0 = cpu_seconds(proc), time.monotonic()
    limit = p.wait_for("limit", timeout=60)[0]
    cpu1, t1 = cpu_seconds(proc), time.monotonic()
    busy = (cpu1 - cpu0) / (t1 - t0)  # a figure for `make stress`, not a bound
    # Counted, not timed: the primary's loop turns (each wait in its selector). A restart is a
    # handful (the timer, the fork, the worker's messages and exit); a loop that spun or polled
    # through the seconds of back-off would make hundreds to tens of thousands.
    turns = limit["turns"] - first["turns"]
    assert turns <= LIMIT * TURNS_PER_RESTART, f"{turns} loop turns for {LIMIT} restarts"

    assert p.wait(20) == 1, p.output()  # on_limit='stop': status 1
    scheduled = p.records("scheduled")
    delays = [r["delay"] for r in scheduled]
    assert delays == pytest.approx([min(2.0, 0.2 * 2**n) for n in range(LIMIT)])
    assert {r["kind"] for r in scheduled} == {kind}
    exits, spawns = p.records("exit"), p.records("spawn")
    assert len(exits) == len(spawns) == LIMIT + 1
    gaps = []
    for r in scheduled:
        spawn = next(s for s in spawns if s["t"] >= r["t"])
        gaps.append(spawn["t"] - r["t"])
    # Each restart waited out its delay (some slack for the loop's timer resolution).
    for delay, gap in zip(delays, gaps, strict=True):
        assert gap >= delay - 0.01, (delay, gap)
    assert limit["restarts_in_window"] == LIMIT and limit["last_exit"] == kind
    lines = [line for line in p.stderr.splitlines() if "restart limit reached" in line]
    assert len(lines) == 1, p.stderr
    assert (
        f"restart limit reached ({LIMIT} restarts within 120s, limit {LIMIT}); "
        f"last exit: {kind} in slot 0"
    ) in lines[0]
    figure(
        TARGET,
        f"{kind}: {LIMIT} restarts after {', '.join(f'{d:g}' for d in delays)} s, "
        f"then the limit (one line on stderr, exit 1); primary loop turns {turns} (bound "
        f"{LIMIT * TURNS_PER_RESTART}), CPU {busy:.1%} of a core over {t1 - t0:.1f} s",
    )
