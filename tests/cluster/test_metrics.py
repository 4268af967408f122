"""The primary's /metrics endpoint with real workers under a short loopback load: once the load
has stopped its counters equal the cluster's own (round_robin_stats(), each worker's own count
of the requests it served, the fork and exit events), every metric the Grafana dashboard asks
for is there, and it serves GET /metrics only."""

import json
import os
import re
import signal
import socket
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import PrimaryProcess, _clean_env, _write_script
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.timeout(60)

DASHBOARD = Path(__file__).resolve().parents[2] / "examples" / "grafana-dashboard.json"
WORKERS = 3
CLIENTS, PER_CLIENT = 4, 30

PRIMARY = """
if cluster.is_primary:
    import signal
    cluster.setup_primary(metrics="127.0.0.1:0")
    cluster.on("fork", lambda w: out("fork", id=w.id, wpid=w.process.pid))
    cluster.on("listening", lambda w, a: out("listening", id=w.id, port=a.port))
    cluster.on("exit", lambda w, c, s: out("exit", id=w.id, code=c, signal=s))
    cluster.on("message", lambda w, m, h=None: out("served", id=w.id, n=m["served"]))
    for _ in range(3):
        cluster.fork()
    out("metrics", url=cluster._primary.metrics.url)

    def report():
        for w in list(cluster.workers.values()):
            w.send("served?")
        out("rr", **cluster.round_robin_stats())

    cluster._primary.loop.add_signal_handler(signal.SIGUSR2, report)
    cluster._primary.loop.add_signal_handler(signal.SIGUSR1, lambda: cluster.workers[1].send("exit 3"))
else:
    from http.server import BaseHTTPRequestHandler
    from clusterlab.servers import ThreadingHTTPServer

    served = [0]
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            with lock:
                served[0] += 1
            body = str(cluster.worker.id).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    def on_message(m, h=None):
        if m == "served?":
            cluster.worker.send({"served": served[0]})
        elif m == "exit 3":
            os._exit(3)

    cluster.worker.on("message", on_message)
    ThreadingHTTPServer(("127.0.0.1", 0), Handler).serve_forever()
"""


def get(port: int) -> str:
    """One HTTP/1.0 request, read to EOF (the worker counted it before closing)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        c.sendall(b"GET / HTTP/1.0\r\n\r\n")
        chunks = []
        while chunk := c.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def load(port: int) -> None:
    errors: list[BaseException] = []

    def client() -> None:
        try:
            for _ in range(PER_CLIENT):
                assert get(port).startswith("HTTP/1.0 200")
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors


def scrape(url: str) -> dict[str, dict[tuple, float]]:
    """Sample name -> {sorted label items: value}."""
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        samples.setdefault(family.name, {})
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


def by_worker(samples: dict[tuple, float]) -> dict[int, float]:
    return {int(dict(labels)["worker"]): value for labels, value in samples.items()}


@pytest.fixture(scope="module")
def run():
    """A primary with three counting workers, loaded; then worker 1 exits with status 3 and
    worker 2 is SIGKILLed. Its records, and a scrape once everything settled."""
    with tempfile.TemporaryDirectory() as tmp:
        script = _write_script(Path(tmp), PRIMARY, prelude=True)
        p = PrimaryProcess([sys.executable, str(script)], env=_clean_env(None), cwd=tmp)
        try:
            yield _drive(p)
        finally:
            p.close()


def _drive(p: PrimaryProcess) -> dict:
    listening = p.wait_for("listening", count=WORKERS, timeout=20)
    url = p.wait_for("metrics")[0]["url"]
    load(listening[0]["port"])
    p.send_signal(signal.SIGUSR2)
    served = {r["id"]: r["n"] for r in p.wait_for("served", count=WORKERS, timeout=10)}
    p.send_signal(signal.SIGUSR1)
    os.kill(next(r["wpid"] for r in p.records("fork") if r["id"] == 2), signal.SIGKILL)
    exits = p.wait_for("exit", count=2, timeout=10)
    p.send_signal(signal.SIGUSR2)  # the survivor's count again, and the hand-off counters
    p.wait_for("served", count=WORKERS + 1, timeout=10)
    rr = p.wait_for("rr", count=2)[-1]
    return {
        "p": p,
        "url": url,
        "served": served,
        "exits": exits,
        "forks": p.records("fork"),
        "rr": rr,
        "samples": scrape(url),
    }


def test_counters_equal_the_clusters_own_once_the_load_stopped(run):
    samples = run["samples"]
    requests = by_worker(samples["clusterlab_worker_requests_total"])
    assert requests == run["served"]  # the two that exited included
    assert sum(requests.values()) == CLIENTS * PER_CLIENT
    assert samples["clusterlab_worker_forks_total"][()] == len(run["forks"]) == WORKERS
    exits = {
        (("code", "" if r["code"] is None else str(r["code"])), ("signal", r["signal"] or "")): 1
        for r in run["exits"]
    }
    assert samples["clusterlab_worker_exits_total"] == exits
    assert exits.keys() == {(("code", "3"), ("signal", "")), (("code", ""), ("signal", "SIGKILL"))}
    assert samples["clusterlab_workers_alive"][()] == WORKERS - 2
    rr = run["rr"]
    for field in ("accepted", "handed", "requeued", "dropped", "policy_errors"):
        assert sum(samples[f"clusterlab_handoff_{field}_total"].values()) == rr[field], field
    assert sum(samples["clusterlab_handoff_queued"].values()) == rr["queued"]
    (labels,) = samples["clusterlab_handoff_handed_total"]
    assert dict(labels)["policy"] == "rr"
    handed = by_worker(samples["clusterlab_worker_connections_handed_total"])
    assert sum(handed.values()) == rr["handed"] == CLIENTS * PER_CLIENT
    # the primary sent at least its five messages ("served?" four times, "exit 3")
    assert samples["clusterlab_ipc_messages_total"][(("direction", "to_workers"),)] >= 5
    assert samples["clusterlab_ipc_messages_total"][(("direction", "from_workers"),)] >= 4


def test_every_metric_the_dashboard_queries_is_served(run):
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    used = {name for expr in exprs for name in re.findall(r"\bclusterlab_[a-z_]+", expr)}
    assert len(exprs) >= 4 and used
    assert used <= run["samples"].keys(), used - run["samples"].keys()


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/", 404), ("GET", "/other", 404), ("POST", "/metrics", 405), ("PUT", "/", 405)],
)
def test_only_get_metrics_is_served(run, method, path, status):
    url = run["url"].removesuffix("/metrics") + path
    request = urllib.request.Request(url, method=method, data=b"" if method != "GET" else None)
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert caught.value.code == status
