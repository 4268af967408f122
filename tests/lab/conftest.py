"""Fixtures for the lab tests: a real loopback HTTP server that counts for itself, and a check
that a test leaves no child process behind."""

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil
import pytest

HERE = Path(__file__).parent


class CountingServer:
    def __init__(self, process: subprocess.Popen, port: int) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def counts(self) -> dict:
        with urllib.request.urlopen(self.url + "/count", timeout=5) as response:
            return json.loads(response.read())


@pytest.fixture
def counting_server():
    process = subprocess.Popen(
        [sys.executable, str(HERE / "counting_server.py"), "0", "w-test"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = int(process.stdout.readline())
        yield CountingServer(process, port)
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stdout.close()


@pytest.fixture
def no_leftover_processes():
    """Fails the test if any process started during it is still alive afterwards."""
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield
    left = [p for p in me.children(recursive=True) if p.pid not in before]
    _, alive = psutil.wait_procs(left, timeout=5)
    assert not alive, f"processes left behind: {[(p.pid, p.cmdline()) for p in alive]}"
