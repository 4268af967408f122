"""A supervisor's figures on the primary's /metrics: a worker that stops beating is killed as a
hang and restarted until the restart limit refuses it; restarts, refusals and hangs equal the
supervisor's own stats, and the forks and SIGKILL exits the cluster's."""

import signal
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.timeout(40)

PRIMARY = """
from clusterlab import supervisor
from clusterlab.supervisor import ENV_SLOT, HeartbeatPolicy, RestartPolicy, Supervisor

if cluster.is_primary:
    import signal
    cluster.setup_primary(metrics="127.0.0.1:0")
    sup = Supervisor(
        workers=2,
        restart=RestartPolicy.immediate(max_restarts=2, within=60),
        heartbeat=HeartbeatPolicy(interval=0.1, timeout=0.8),
        on_limit="keep",
        grace=1,
    )
    sup.on("restart_refused", lambda slot, kind: out("refused", slot=slot, kind=kind))
    cluster.on("fork", lambda w: out("fork", id=w.id))
    cluster.on("exit", lambda w, c, s: out("exit", id=w.id, code=c, signal=s))
    sup.start()
    out("metrics", url=cluster._primary.metrics.url)
    cluster._primary.loop.add_signal_handler(
        signal.SIGUSR2, lambda: out("stats", stats=dict(sup.stats))
    )
else:
    s = cluster.listen(0, "127.0.0.1")
    beats = supervisor.heartbeat(None)
    beats.beat(force=True)
    if os.environ[ENV_SLOT] == "1":
        time.sleep(30)  # silent from now on: a hang
    while cluster.worker.is_connected():
        beats.beat()
        time.sleep(0.02)
"""


def test_restarts_refusals_and_hangs_equal_the_supervisors_own(start_primary):
    p = start_primary(PRIMARY)
    url = p.wait_for("metrics")[0]["url"]
    p.wait_for("refused", timeout=30)
    p.send_signal(signal.SIGUSR2)
    stats = p.wait_for("stats")[0]["stats"]
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    # slot 1 hangs three times: two restarts, then the limit (a loaded machine may add one)
    assert stats["hang"] >= 3 and stats["restarts"] == 2 and stats["refused"] >= 1
    assert samples[("clusterlab_supervisor_hangs_total", ())] == stats["hang"]
    assert samples[("clusterlab_supervisor_restarts_total", ())] == stats["restarts"]
    assert samples[("clusterlab_supervisor_restarts_refused_total", ())] == stats["refused"]
    forks = samples[("clusterlab_worker_forks_total", ())]
    assert forks == len(p.records("fork")) == 2 + stats["restarts"]
    killed = (("code", ""), ("signal", "SIGKILL"))
    exits = samples[("clusterlab_worker_exits_total", killed)]
    assert exits == len(p.records("exit")) == stats["hang"]
    assert samples[("clusterlab_workers_alive", ())] == forks - exits
    p.send_signal(signal.SIGTERM)
    assert p.wait(15) in (0, 143), p.output()
