"""bench/sources.py: wrk's loopback connections from many client addresses (the hash row)."""

import ipaddress
import shutil
import socket
import threading

import pytest

from bench import sources
from bench.wrk import run_wrk

pytestmark = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed")


def _peers_seen(env: dict[str, str] | None) -> set[str]:
    """Client addresses of every connection wrk opened in a second (each is closed at
    once, so wrk reconnects all the time)."""
    server = socket.create_server(("127.0.0.1", 0), backlog=128)
    port = server.getsockname()[1]
    seen: set[str] = set()

    def accept() -> None:
        while True:
            try:
                conn, (host, _) = server.accept()
            except OSError:
                return
            seen.add(host)
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        run_wrk(f"http://127.0.0.1:{port}/", 1, 4, 1, close=True, env=env)
    finally:
        server.shutdown(socket.SHUT_RDWR)
        server.close()
        thread.join(5)
    return seen


def test_with_the_preload_wrk_connects_from_many_loopback_addresses_in_turn():
    env = sources.preload_env(count=32)
    if env is None:
        pytest.skip("no C compiler: bench/sources.c cannot be built")
    seen = _peers_seen(env)
    first = ipaddress.ip_address("127.0.1.1")
    expected = {str(first + n) for n in range(32)}
    # every address of the turn, and none outside it (127.0.0.1 would mean a bind failed)
    assert seen == expected, sorted(seen)


def test_without_it_wrk_has_one_address():
    assert _peers_seen(None) == {"127.0.0.1"}
