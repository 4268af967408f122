"""The locustfile the lab hands to locust: a request mix, a warm-up cut, a worker-id tally,
every request's outcome in 100 ms bins (successes, and failures by cause) for the timeline, and
an HDR histogram of the window's latencies at microsecond resolution (locust's own percentiles
are rounded to whole milliseconds).

Runs only inside locust's own processes (never imported by the runner); configured through the
``CLUSTERLAB_LAB_LOAD`` environment variable (JSON) written by ``clusterlab.lab.running.load``.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import gevent
import geventhttpclient.client
from geventhttpclient._parser import HTTPParseError
from geventhttpclient.connectionpool import ConnectionPool
from geventhttpclient.response import HTTPConnectionClosed
from hdrh.histogram import HdrHistogram
from locust import FastHttpUser, between, constant, events, task
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner
from locust.stats import StatsError

from clusterlab.lab.protocol import HISTOGRAM_RANGE_US, LOAD_CONFIG_ENV, LoadFile

_CONFIG: dict[str, Any] = json.loads(os.environ.get(LOAD_CONFIG_ENV, "{}"))
_OUT = Path(_CONFIG.get("out", "."))
_PATHS: list[str] = [p for p, _ in _CONFIG.get("requests", [["/hello", 1]])]
_WEIGHTS: list[float] = [w for _, w in _CONFIG.get("requests", [["/hello", 1]])]
_HEADER: str | None = _CONFIG.get("worker_header")
_RATE_PER_USER: float | None = _CONFIG.get("rate_per_user")
_NEW_CONNECTION = _CONFIG.get("connection") == "new"
#: Each user connects from an address of its own in 127.0.0.0/8 (for address-hashing policies).
_SPREAD_SOURCES = bool(_CONFIG.get("spread_sources"))

#: Width of an outcome bin, seconds (bins are aligned to the Unix epoch).
BIN_S = 0.1

if _CONFIG.get("count_every_failure") and hasattr(
    geventhttpclient.client, "_may_retry_after_send_error"
):
    # geventhttpclient silently re-sends an idempotent request whose connection closed before
    # the answer (a crashed worker's in-flight requests): with faults, count each as it failed.
    geventhttpclient.client._may_retry_after_send_error = lambda method: False

_histogram = HdrHistogram(*HISTOGRAM_RANGE_US)
#: Open model: latency from the actual send (beside the corrected one, from the intended send),
#: and arrivals sent late because their user was still waiting for an earlier answer.
_sent_histogram = HdrHistogram(*HISTOGRAM_RANGE_US)
_arrivals: Counter[str] = Counter()
_tally: Counter[str] = Counter()
_phases: dict[str, float] = {}
_outcomes: Counter[tuple[int, str]] = Counter()
#: Answers after the window's stop (a request in flight at the stop, or an open-model user
#: waking from its pacing): locust's own stats count them, the window does not. Known where the
#: stop is (a lone locust; a master's workers learn of it only when their users have stopped).
_after_stop: Counter[str] = Counter()
_after_stop_failures: Counter[tuple[str, str, str]] = Counter()


def _write_json(name: str, data: object) -> None:
    tmp = _OUT / f".{name}.tmp"
    tmp.write_text(json.dumps(data))
    tmp.replace(_OUT / name)


def _is_worker(environment: Environment) -> bool:
    return isinstance(environment.runner, WorkerRunner)


def _end_warmup(environment: Environment) -> None:
    # Everything before this instant is warm-up: drop it from locust's stats and our tally.
    if environment.runner is not None:
        environment.runner.stats.reset_all()
    _tally.clear()
    _histogram.reset()
    _sent_histogram.reset()
    _arrivals.clear()
    _phases["measure_start"] = time.time()
    _phases["measure_start_monotonic"] = time.monotonic()
    if not _is_worker(environment):
        # tells the runner's fault injector where the measured window starts
        _write_json(LoadFile.MEASURING, {"measure_start": _phases["measure_start"]})
        gevent.spawn_later(float(_CONFIG.get("duration", 1.0)), _end_measurement, environment)


def _end_measurement(environment: Environment) -> None:
    # Stop the users now. A lone locust writes its final counts itself at the stop (TOTALS) and
    # quits at once; a master quits only after the workers' last reports (every 3 s) arrived
    # and its CSV writer (once a second) has written the numbers they make.
    _phases["stop"] = time.time()
    _phases["stop_monotonic"] = time.monotonic()
    if environment.runner is not None:
        environment.runner.stop()
        gevent.spawn_later(float(_CONFIG.get("grace", 0.0)), environment.runner.quit)


def _write_totals(environment: Environment) -> None:
    """A lone locust's request and failure counts of the window, exact at the stop."""
    stats = environment.runner.stats if environment.runner is not None else None
    if stats is None:
        return
    failures: list[dict[str, Any]] = []
    for e in stats.errors.values():  # the columns of locust's failures CSV
        error = e.parse_error(e.error)
        left = e.occurrences - _after_stop_failures[(e.method, e.name, error)]
        if left > 0:
            failures.append(
                {"Method": e.method, "Name": e.name, "Error": error, "Occurrences": left}
            )
    totals = {
        "requests": stats.total.num_requests - _after_stop["requests"],
        "failures": stats.total.num_failures - _after_stop["failures"],
        "after_stop": _after_stop["requests"],
    }
    _write_json(LoadFile.TOTALS, {**totals, "failure_table": failures})


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_: Any) -> None:
    _phases["start"] = time.time()
    _phases["start_monotonic"] = time.monotonic()
    gevent.spawn_later(float(_CONFIG.get("warmup", 0.0)), _end_warmup, environment)


@events.test_stop.add_listener
def _on_test_stop(environment: Environment, **_: Any) -> None:
    _phases.setdefault("stop", time.time())
    _phases.setdefault("stop_monotonic", time.monotonic())
    if not isinstance(environment.runner, MasterRunner):
        if _HEADER:
            _write_json(LoadFile.TALLY.of(os.getpid()), dict(_tally))
        rows = [[b, outcome, n] for (b, outcome), n in sorted(_outcomes.items())]
        _write_json(LoadFile.OUTCOMES.of(os.getpid()), {"bin_s": BIN_S, "counts": rows})
        (_OUT / LoadFile.HISTOGRAM.of(os.getpid())).write_bytes(_histogram.encode())
        if _RATE_PER_USER:
            sent = _sent_histogram.encode().decode("ascii")
            _write_json(LoadFile.OPEN.of(os.getpid()), {**_arrivals, "sent_histogram": sent})
    if not _is_worker(environment):
        if not isinstance(environment.runner, MasterRunner):
            _write_totals(environment)
        _write_json(LoadFile.PHASES, _phases)


@events.request.add_listener
def _on_request(
    request_type: str = "",
    name: str = "",
    response_time: float = 0.0,
    response: Any = None,
    exception: Any = None,
    **_: Any,
) -> None:
    _outcomes[(int(time.time() / BIN_S), "ok" if exception is None else cause(exception))] += 1
    if "stop" in _phases:
        _after_stop["requests"] += 1
        if exception is not None:
            _after_stop["failures"] += 1
            _after_stop_failures[(request_type, name, StatsError.parse_error(exception))] += 1
        return
    _histogram.record_value(max(1, round(response_time * 1000.0)))
    if _HEADER and exception is None and response is not None:
        _tally[response.headers.get(_HEADER) or "unknown"] += 1


def cause(exception: BaseException) -> str:
    """A failure's cause, from the exception locust reports (unwrapping geventhttpclient's
    ``original``): refused, reset, closed (the connection closed before an answer), incomplete
    (the answer broke off, or could not be parsed), timeout, 5xx, 4xx, or other."""
    while (inner := getattr(exception, "original", None)) is not None:
        exception = inner
    code = getattr(exception, "code", None)
    if isinstance(code, int):
        return "5xx" if code >= 500 else "4xx" if code >= 400 else "other"
    if isinstance(exception, ConnectionRefusedError):
        return "refused"
    if isinstance(exception, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return "reset"
    if isinstance(exception, HTTPConnectionClosed):
        return "closed"
    if isinstance(exception, HTTPParseError):
        return "incomplete"
    if isinstance(exception, TimeoutError | gevent.Timeout):
        return "timeout"
    return "other"


_sources: dict[Any, str] = {}  # a user's greenlet → the address its connections come from
_users_started = [0]
_process = [0]  # this locust process's index among the workers (0 alone)


def source_address(process: int, user: int) -> str:
    """The loopback address of the ``user``-th user started by locust process ``process``:
    distinct for up to 254 processes of 64,516 users each."""
    return f"127.{1 + process % 254}.{user // 254 % 254 + 1}.{1 + user % 254}"


def _bound_tcp_socket(self: ConnectionPool, family: int, socktype: int, protocol: int) -> Any:
    sock = _plain_tcp_socket(self, family, socktype, protocol)
    address = _sources.get(gevent.getcurrent())
    if address is not None:
        sock.bind((address, 0))
    return sock


if _SPREAD_SOURCES:
    _plain_tcp_socket = ConnectionPool._create_tcp_socket
    ConnectionPool._create_tcp_socket = _bound_tcp_socket  # type: ignore[method-assign]


@events.init.add_listener
def _on_init(environment: Environment, **_: Any) -> None:
    _process[0] = int(getattr(environment.runner, "worker_index", 0) or 0)


class LabUser(FastHttpUser):
    """One simulated client: closed model (think time) or open model (paced, latency from the
    intended send time so that stalls are not hidden by coordinated omission)."""

    wait_time = (
        constant(0)
        if _RATE_PER_USER
        else between(float(_CONFIG.get("wait", 0.0)), float(_CONFIG.get("wait", 0.0)))
    )
    _headers = {"Connection": "close"} if _NEW_CONNECTION else {}

    def on_start(self) -> None:
        if _SPREAD_SOURCES:  # the user's requests run in this greenlet
            _sources[gevent.getcurrent()] = source_address(_process[0], _users_started[0])
            _users_started[0] += 1
        self._next_send = time.perf_counter()
        if _RATE_PER_USER:
            self._next_send += random.random() / _RATE_PER_USER

    @task
    def request(self) -> None:
        path = random.choices(_PATHS, _WEIGHTS)[0]
        if not _RATE_PER_USER:
            self.client.get(path, headers=self._headers)
            return
        intended = self._next_send
        self._next_send += 1.0 / _RATE_PER_USER
        delay = intended - time.perf_counter()
        if delay > 0:
            gevent.sleep(delay)
        if "stop" in _phases:  # woke after the window: this arrival is not the run's
            return
        measuring = "measure_start" in _phases and "stop" not in _phases
        _arrivals["arrivals"] += measuring
        _arrivals["late"] += measuring and delay < 0
        sent = time.perf_counter()
        with self.client.get(path, headers=self._headers, catch_response=True) as response:
            done = time.perf_counter()
            response.request_meta["response_time"] = (done - intended) * 1000.0
        if measuring:
            _sent_histogram.record_value(max(1, round((done - sent) * 1e6)))
