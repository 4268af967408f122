"""Where the metrics endpoint binds: only a HOST:PORT the user gives; anything else, or an
address that cannot be bound, is one clear line (a ValueError or an OSError naming the address
from the API, exit 2 or 1 from `clusterlab serve --metrics`) and no worker is started."""

import errno
import socket
import subprocess
import sys

import pytest

from clusterlab.cluster._metrics import parse_address

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(
    "given", ["9464", ":9464", "127.0.0.1:", "127.0.0.1:70000", "127.0.0.1:x", "[::1", None, 9464]
)
def test_an_address_without_host_and_port_is_refused_in_one_line(given):
    with pytest.raises(ValueError) as caught:
        parse_address(given)
    assert str(caught.value).count("\n") == 0
    assert repr(given) in str(caught.value)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("[::1]:0", ("::1", 0)),
        ("localhost:1", ("localhost", 1)),
    ],
)
def test_host_and_port_are_read_as_given(given, expected):
    assert parse_address(given) == expected


def test_setup_primary_names_the_address_it_cannot_bind(run_primary):
    result = run_primary(
        """
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = "127.0.0.1:%d" % taken.getsockname()[1]
        try:
            cluster.setup_primary(metrics=address)
        except OSError as exc:
            out("error", text=str(exc), errno=exc.errno, address=address)
        try:
            cluster.setup_primary(metrics="9464")
        except ValueError as exc:
            out("bad", text=str(exc))
        out("served", metrics=cluster._primary.metrics is None)
        """
    ).check()
    error = result.one("error")
    assert error["errno"] == errno.EADDRINUSE
    assert error["address"] in error["text"] and "\n" not in error["text"]
    assert "HOST:PORT" in result.one("bad")["text"]
    assert result.one("served")["metrics"] is True


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clusterlab.cli", "serve", "--workers", "1", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=20,
    )


def test_serve_refuses_a_bad_metrics_address_in_one_line():
    done = serve("--metrics", "9464")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "'9464'" in done.stderr
    assert "serving" not in done.stdout


def test_serve_exits_non_zero_in_one_line_when_the_metrics_port_is_taken():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        done = serve("--metrics", address)
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0
    assert f"cannot serve metrics on {address}" in done.stderr
    assert "serving" not in done.stdout
