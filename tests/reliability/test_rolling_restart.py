"""Rolling restart under load: every worker replaced, one at a time, and no request fails."""

import signal
import time

import pytest

from .support import HttpLoad, env, pick, script

TARGET = "rolling restart"
WORKERS = pick(2, 4)
ROLLS = pick(1, 10)
pytestmark = pytest.mark.timeout(pick(40, 240))


@pytest.mark.parametrize("policy", ["rr", "none"])
def test_rolling_restart_under_load_fails_no_request(
    start_primary, free_tcp_port, tmp_path, figure, policy
):
    p = start_primary(
        script(f"workers={WORKERS}, grace=10"),
        env=env(free_tcp_port, tmp_path / "inflight", policy),
    )
    p.wait_for("ready", count=WORKERS, timeout=30)
    # Requests of 0-40 ms: a worker told to disconnect still holds some, which it must finish.
    with HttpLoad(
        free_tcp_port, clients=3 * WORKERS, path=lambda n: f"/?ms={n % 5 * 10}", timeout=20
    ) as load:
        time.sleep(0.5)
        for n in range(1, ROLLS + 1):
            p.send_signal(signal.SIGHUP)
            p.wait_for("rolled", count=n, timeout=60)
            time.sleep(0.3)
    results = load.snapshot()
    failures = load.failures()
    assert not failures, f"{len(failures)} of {len(results)} failed: {HttpLoad.describe(failures)}"
    ready = p.records("ready")
    assert len(ready) == WORKERS * (ROLLS + 1)
    assert [r["n"] for r in p.records("rolled")] == [WORKERS] * ROLLS
    exits = p.records("exit")
    assert len(exits) == WORKERS * ROLLS and {e["kind"] for e in exits} == {"clean"}
    # Each replacement was ready before its predecessor exited, and the predecessor is told
    # to disconnect at that moment: requests it was serving then had to finish.
    finished_by_old = 0
    for e in exits:
        spawned = next(r for r in ready if r["wpid"] == e["wpid"])
        successor = next(r for r in ready if r["slot"] == e["slot"] and r["t"] > spawned["t"])
        assert successor["t"] < e["t"], f"{e['wpid']} exited before its replacement was ready"
        finished_by_old += sum(
            1 for o in results if o.worker == e["wpid"] and o.start < successor["t"] < o.end
        )
    newest = {r["wpid"] for r in ready[-WORKERS:]}
    assert newest <= set(load.served_by()), "the last replacements served nothing"
    p.send_signal(signal.SIGUSR1)
    assert p.wait(20) == 0
    figure(
        TARGET,
        f"{policy}, {WORKERS} workers, {ROLLS} roll(s): 0 of {len(results)} "
        f"requests failed; {finished_by_old} were in flight on a worker as it was "
        "told to leave, and finished",
    )
