"""Source addresses for address-hashing policies: with ``spread_sources`` every locust user (in
every locust process) connects from a 127.0.0.0/8 address of its own and keeps it; without it,
all come from 127.0.0.1. Real locust against a loopback server that records its peers."""

import ipaddress
import threading
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from clusterlab.lab.config.scenario import Load, Workload
from clusterlab.lab.running.load import read_load, start_load, stop_load, wait_load

HELLO = Workload("hello", (("/hello", 1.0),))


class Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    peers: dict[str, set[int]]
    lock = threading.Lock()

    def do_GET(self):
        with self.lock:
            self.peers[self.client_address[0]].add(self.client_address[1])
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, *args):
        pass


@pytest.fixture
def recorder():
    Recorder.peers = defaultdict(set)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def load_from(recorder, tmp_path, processes: int, spread: bool) -> dict[str, set[int]]:
    url = f"http://127.0.0.1:{recorder.server_address[1]}"
    spec = Load(users=6, warmup=0.5, duration=1.0, connection="new", wait=0.02)
    run = start_load(spec, HELLO, url, processes, tmp_path, None, spread_sources=spread)
    try:
        wait_load(run)
    finally:
        stop_load(run)
    assert read_load(tmp_path).stats["failures"] == 0
    return dict(Recorder.peers)


def test_each_user_of_each_locust_process_connects_from_its_own_loopback_address(
    recorder, tmp_path
):
    peers = load_from(recorder, tmp_path, processes=2, spread=True)
    assert len(peers) == 6, sorted(peers)  # six users, six addresses
    loopback = ipaddress.ip_network("127.0.0.0/8")
    assert all(ipaddress.ip_address(a) in loopback and a != "127.0.0.1" for a in peers)
    # a new connection per request: each user came back many times, always from its address
    assert all(len(ports) >= 5 for ports in peers.values()), {a: len(p) for a, p in peers.items()}
    assert len({a.split(".")[1] for a in peers}) == 2  # one second octet per locust process


def test_without_spreading_every_user_connects_from_127_0_0_1(recorder, tmp_path):
    assert set(load_from(recorder, tmp_path, processes=1, spread=False)) == {"127.0.0.1"}
