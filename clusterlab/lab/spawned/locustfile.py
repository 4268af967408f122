"""The locustfile the lab hands to locust: a request mix, a warm-up cut, a worker-id tally,
every request's outcome in 100 ms bins (successes, and failures by cause) for the timeline, and
an HDR histogram of the window's latencies at microsecond resolution (locust's own percentiles
are rounded to whole milliseconds).

Runs only inside locust's own processes (never imported by the runner). A lone locust and a
master are configured through the ``CLUSTERLAB_LAB_LOAD`` environment variable (JSON) written by
``clusterlab.lab.running.load``; a worker gets the same from its master at each point's start
(``distributed``), and sends its tallies, bins and histograms back at its stop, where the master
merges them: the files are written by a lone locust or a master only.
"""

from __future__ import annotations

import json
import math
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
from locust import FastHttpUser, events, task
from locust.env import Environment
from locust.rpc import Message
from locust.runners import MasterRunner, WorkerRunner
from locust.stats import StatsError

from clusterlab.lab.protocol import (
    HISTOGRAM_RANGE_US,
    LOAD_CONFIG_ENV,
    LOAD_TOKEN_ENV,
    LoadFile,
    LoadMessage,
)
from clusterlab.lab.spawned import distributed

_CONFIG: dict[str, Any] = {}
_OUT = Path(".")
_PATHS: list[str] = ["/hello"]
_WEIGHTS: list[float] = [1.0]
_HEADER: str | None = None
_RATE_PER_USER: float | None = None
_NEW_CONNECTION = False
#: Each user connects from an address of its own in 127.0.0.0/8 (for address-hashing policies).
_SPREAD_SOURCES = False

#: Width of an outcome bin, seconds (bins are aligned to the Unix epoch).
BIN_S = 0.1


def _configure(config: dict[str, Any]) -> None:
    """Take a point's load configuration (from the environment, or a master's CONFIG)."""
    global _OUT, _PATHS, _WEIGHTS, _HEADER, _RATE_PER_USER, _NEW_CONNECTION, _SPREAD_SOURCES
    _CONFIG.clear()
    _CONFIG.update(config)
    requests = config.get("requests", [["/hello", 1]])
    _OUT = Path(config.get("out", "."))
    _PATHS, _WEIGHTS = [p for p, _ in requests], [w for _, w in requests]
    _HEADER = config.get("worker_header")
    _RATE_PER_USER = config.get("rate_per_user")
    _NEW_CONNECTION = config.get("connection") == "new"
    _SPREAD_SOURCES = bool(config.get("spread_sources"))
    if config.get("count_every_failure") and hasattr(
        geventhttpclient.client, "_may_retry_after_send_error"
    ):
        # geventhttpclient silently re-sends an idempotent request whose connection closed
        # before the answer (a crashed worker's in-flight requests): with faults, count each
        # as it failed.
        geventhttpclient.client._may_retry_after_send_error = lambda method: False
    if _SPREAD_SOURCES and ConnectionPool._create_tcp_socket is not _bound_tcp_socket:
        _plain_tcp_socket[0] = ConnectionPool._create_tcp_socket
        ConnectionPool._create_tcp_socket = _bound_tcp_socket  # type: ignore[method-assign]


_histogram = HdrHistogram(*HISTOGRAM_RANGE_US)
#: Open model: latency from the actual send (beside the corrected one, from the intended send),
#: and arrivals sent late because their user was still waiting for an earlier answer.
_sent_histogram = HdrHistogram(*HISTOGRAM_RANGE_US)
_arrivals: Counter[str] = Counter()
_tally: Counter[str] = Counter()
#: Answers by worker header over the whole load (warm-up and after the stop included): what the
#: target's own counters of the point's load must come to.
_tally_load: Counter[str] = Counter()
_phases: dict[str, float] = {}
_outcomes: Counter[tuple[int, str]] = Counter()
#: Answers after the window's stop (a request in flight at the stop, or an open-model user
#: waking from its pacing): locust's own stats count them, the window does not. Known where the
#: stop is (a lone locust; a master's workers learn of it only when their users have stopped).
_after_stop: Counter[str] = Counter()
_after_stop_failures: Counter[tuple[str, str, str]] = Counter()


#: What the window waits for: "warmed" (the warm-up is over) and "spawned" (every user started).
_gate: set[str] = set()
#: The longest the window waits for the users past the warm-up, seconds (the load's run time
#: allows 15 s beyond the window).
SPAWN_WAIT_S = 10.0
#: The environment of a lone locust or a master, set at the load's start.
_started_by: list[Environment] = []

_cpu = distributed.CpuWindow()
#: The master's side of a distributed run (None in a lone locust and in a worker).
_master: list[distributed.Master] = []


def _write_json(name: str, data: object) -> None:
    tmp = _OUT / f".{name}.tmp"
    tmp.write_text(json.dumps(data))
    tmp.replace(_OUT / name)


def _is_worker(environment: Environment) -> bool:
    return isinstance(environment.runner, WorkerRunner)


def _is_master(environment: Environment) -> bool:
    return isinstance(environment.runner, MasterRunner)


def _start_window(environment: Environment) -> None:
    """Everything before this instant is warm-up: drop it from locust's stats and our counts."""
    if environment.runner is not None:
        environment.runner.stats.reset_all()
    _tally.clear()
    _histogram.reset()
    _sent_histogram.reset()
    _arrivals.clear()
    _cpu.start()
    _phases["measure_start"] = time.time()
    _phases["measure_start_monotonic"] = time.monotonic()


def _end_warmup(environment: Environment) -> None:
    if _master:
        _master[0].measure_start = time.time()
        _master[0].send(LoadMessage.MEASURE)
    _start_window(environment)
    # tells the runner's fault injector where the measured window starts
    _write_json(LoadFile.MEASURING, {"measure_start": _phases["measure_start"]})
    gevent.spawn_later(float(_CONFIG.get("duration", 1.0)), _end_measurement, environment)


def _end_measurement(environment: Environment) -> None:
    # Stop the users now. A lone locust writes its final counts itself at the stop and quits at
    # once; a master tells its workers the window is over (answers after it are not the
    # window's), stops them, and quits once each sent its results or is known gone.
    _phases["stop"] = time.time()
    _phases["stop_monotonic"] = time.monotonic()
    runner = environment.runner
    if runner is None:
        return
    if not _master:
        runner.stop()
        runner.quit()
        return
    _master[0].send(LoadMessage.STOP)
    gevent.spawn(runner.stop)
    _master[0].collect(float(_CONFIG.get("grace", 5.0)))
    _write_results(environment)
    _master[0].dismiss()
    runner.quit()


def _write_totals(environment: Environment) -> None:
    """The window's request and failure counts, less the answers after its stop (a lone
    locust's own; a master's, from its workers' reports and results)."""
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
        "by_worker_whole_load": dict(_tally_load),
    }
    _write_json(LoadFile.TOTALS, {**totals, "failure_table": failures})


def _write_results(environment: Environment) -> None:
    """The gathered tally, bins and histograms, the totals and the phases (and, a master, its
    workers and those lost)."""
    pid = os.getpid()
    if _HEADER:
        _write_json(LoadFile.TALLY.of(pid), dict(_tally))
    rows = [[b, outcome, n] for (b, outcome), n in sorted(_outcomes.items())]
    _write_json(LoadFile.OUTCOMES.of(pid), {"bin_s": BIN_S, "counts": rows})
    (_OUT / LoadFile.HISTOGRAM.of(pid)).write_bytes(_histogram.encode())
    if _RATE_PER_USER:
        sent = _sent_histogram.encode().decode("ascii")
        _write_json(LoadFile.OPEN.of(pid), {**_arrivals, "sent_histogram": sent})
    _write_totals(environment)
    if _master:
        _master[0].write()
    _write_json(LoadFile.PHASES, _phases)


def _results() -> dict[str, Any]:
    """A worker's results message: what a lone locust would write, and its CPU."""
    return {
        "tally": dict(_tally),
        "tally_load": dict(_tally_load),
        "outcomes": [[b, outcome, n] for (b, outcome), n in _outcomes.items()],
        "histogram": _histogram.encode().decode("ascii"),
        "sent_histogram": _sent_histogram.encode().decode("ascii"),
        "arrivals": dict(_arrivals),
        "after_stop": dict(_after_stop),
        "after_stop_failures": [[*key, n] for key, n in _after_stop_failures.items()],
        "cpu": _cpu.figures(),
    }


def _absorb(results: dict[str, Any]) -> None:
    """The master: one worker's results into the gathered counts."""
    _tally.update(results["tally"])
    _tally_load.update(results["tally_load"])
    _outcomes.update({(int(b), str(o)): int(n) for b, o, n in results["outcomes"]})
    _histogram.decode_and_add(results["histogram"].encode("ascii"))
    _sent_histogram.decode_and_add(results["sent_histogram"].encode("ascii"))
    _arrivals.update(results["arrivals"])
    _after_stop.update(results["after_stop"])
    _after_stop_failures.update({(m, n, e): c for m, n, e, c in results["after_stop_failures"]})


@events.init.add_listener
def _on_init(environment: Environment, **_: Any) -> None:
    _process[0] = int(getattr(environment.runner, "worker_index", 0) or 0)
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        runner.register_message(LoadMessage.CONFIG, _on_config)
        runner.register_message(
            LoadMessage.MEASURE, lambda environment, **_: _start_window(environment)
        )
        runner.register_message(LoadMessage.STOP, _on_stop_message)
        distributed.say_hello(environment)
    elif isinstance(runner, MasterRunner):
        master = distributed.Master(
            environment,
            _OUT,
            token=os.environ.get(LOAD_TOKEN_ENV, ""),
            expected=int(_CONFIG.get("expect_workers", 1)),
            wait=float(_CONFIG.get("workers_wait", 30.0)),
            where=str(_CONFIG.get("workers_where", "")),
            absorb=_absorb,
        )
        _master.append(master)


def _on_config(environment: Environment, msg: Message, **_: Any) -> None:
    _configure(msg.data)


def _on_stop_message(environment: Environment, **_: Any) -> None:
    _phases["stop"] = time.time()
    _phases["stop_monotonic"] = time.monotonic()


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_: Any) -> None:
    _phases["start"] = time.time()
    _phases["start_monotonic"] = time.monotonic()
    if _master:  # before locust's spawn messages, on the same connection
        _master[0].send(LoadMessage.CONFIG, _CONFIG)
    if not _is_worker(environment):  # a worker's window comes from its master
        _gate.clear()
        _started_by[:] = [environment]
        warmup = float(_CONFIG.get("warmup", 0.0))
        gevent.spawn_later(warmup, _open_gate, environment, "warmed")
        gevent.spawn_later(warmup + SPAWN_WAIT_S, _open_gate, environment, "spawned")


@events.spawning_complete.add_listener
def _on_spawning_complete(**_: Any) -> None:
    # locust names no environment here: the one that started the load
    if _started_by and "spawned" not in _gate:
        _phases["spawned"] = time.time()
        _open_gate(_started_by[0], "spawned")


def _open_gate(environment: Environment, condition: str) -> None:
    """The window starts once the warm-up is over and every user has started, whichever is
    later: on a slow machine starting the users can outlast the warm-up, and a window over the
    ramp would measure less load than was asked. Past ``SPAWN_WAIT_S`` it starts anyway."""
    if "started" in _gate:
        return
    _gate.add(condition)
    if {"warmed", "spawned"} <= _gate:
        _gate.add("started")
        _end_warmup(environment)


@events.test_stop.add_listener
def _on_test_stop(environment: Environment, **_: Any) -> None:
    _phases.setdefault("stop", time.time())
    _phases.setdefault("stop_monotonic", time.monotonic())
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        runner._send_stats()  # its last stats before its results: the master's totals are final
        runner.send_message(LoadMessage.RESULTS, _results())
    elif not _is_master(environment):
        _write_results(environment)


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
    if _HEADER and exception is None and response is not None:
        _tally_load[response.headers.get(_HEADER) or "unknown"] += 1
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


#: ConnectionPool's own socket factory, once the users' sources are spread.
_plain_tcp_socket: list[Any] = [None]


def _bound_tcp_socket(self: ConnectionPool, family: int, socktype: int, protocol: int) -> Any:
    sock = _plain_tcp_socket[0](self, family, socktype, protocol)
    address = _sources.get(gevent.getcurrent())
    if address is not None:
        sock.bind((address, 0))
    return sock


_configure(json.loads(os.environ.get(LOAD_CONFIG_ENV, "{}")))


#: The open model's grid: user n of this process sends at the anchor + (n·φ mod 1) of a period,
#: then every period. Golden-ratio phases spread any number of users nearly evenly over the
#: period, so the process's arrivals come at an even rate whatever the users' start times and
#: however locust splits them among processes: a window of T s sees rate × T of them, ± a few.
#: (Random phases would make it binomial: ± 8 % in a 1 s window of 80 req/s at 0.5 req/s a
#: user, enough to fail a capacity probe's 90 % delivered rule at a rate easily sustained.)
_GOLDEN = (5**0.5 - 1) / 2
_grid: dict[str, float] = {}


def first_send(now: float, rate_per_user: float) -> float:
    """A newly started user's first send time on this process's grid: its slot's next
    instant at or after ``now`` (``perf_counter`` seconds)."""
    anchor = _grid.setdefault("anchor", now)
    n = _grid.get("users", 0.0)
    _grid["users"] = n + 1
    period = 1.0 / rate_per_user
    slot = anchor + (n * _GOLDEN % 1.0) * period
    return slot + max(0, math.ceil((now - slot) / period)) * period


class LabUser(FastHttpUser):
    """One simulated client: closed model (think time) or open model (paced, latency from the
    intended send time so that stalls are not hidden by coordinated omission)."""

    def wait_time(self) -> float:
        # The open model's pacing is locust's wait, not a sleep inside the task: a user waiting
        # for its next send is stopped at once at the window's end (locust waits up to its stop
        # timeout only for users inside a task: those with a request in flight).
        if not _RATE_PER_USER:
            return float(_CONFIG.get("wait", 0.0))
        delay = self._next_send - time.perf_counter()
        if delay > 0:
            self._paced = True
        return max(0.0, delay)

    @property
    def _headers(self) -> dict[str, str]:
        return {"Connection": "close"} if _NEW_CONNECTION else {}

    def on_start(self) -> None:
        if _SPREAD_SOURCES:  # the user's requests run in this greenlet
            _sources[gevent.getcurrent()] = source_address(_process[0], _users_started[0])
            _users_started[0] += 1
        self._next_send = time.perf_counter()
        self._paced = False  # the coming send was waited for (not late, whatever the overshoot)
        if _RATE_PER_USER:
            self._next_send = first_send(self._next_send, _RATE_PER_USER)

    @task
    def request(self) -> None:
        path = random.choices(_PATHS, _WEIGHTS)[0]
        if not _RATE_PER_USER:
            self.client.get(path, headers=self._headers)
            return
        intended = self._next_send
        if intended > time.perf_counter():  # too early (the first send): wait_time waits for it
            return
        if "stop" in _phases:  # woke after the window: this arrival is not the run's
            return
        self._next_send += 1.0 / _RATE_PER_USER
        late, self._paced = not self._paced, False
        measuring = "measure_start" in _phases and "stop" not in _phases
        _arrivals["arrivals"] += measuring
        _arrivals["late"] += measuring and late
        sent = time.perf_counter()
        with self.client.get(path, headers=self._headers, catch_response=True) as response:
            done = time.perf_counter()
            response.request_meta["response_time"] = (done - intended) * 1000.0
        if measuring:
            _sent_histogram.record_value(max(1, round((done - sent) * 1e6)))
