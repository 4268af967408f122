"""The locustfile the lab hands to locust: a request mix, a warm-up cut and a worker-id tally.

Runs only inside locust's own processes (never imported by the runner); configured through the
``CLUSTERLAB_LAB_LOAD`` environment variable (JSON) written by ``clusterlab.lab.loadgen``.
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
from locust import FastHttpUser, between, constant, events, task
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

_CONFIG: dict[str, Any] = json.loads(os.environ.get("CLUSTERLAB_LAB_LOAD", "{}"))
_OUT = Path(_CONFIG.get("out", "."))
_PATHS: list[str] = [p for p, _ in _CONFIG.get("requests", [["/hello", 1]])]
_WEIGHTS: list[float] = [w for _, w in _CONFIG.get("requests", [["/hello", 1]])]
_HEADER: str | None = _CONFIG.get("worker_header")
_RATE_PER_USER: float | None = _CONFIG.get("rate_per_user")
_NEW_CONNECTION = _CONFIG.get("connection") == "new"

_tally: Counter[str] = Counter()
_phases: dict[str, float] = {}


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
    _phases["measure_start"] = time.time()
    if not _is_worker(environment):
        gevent.spawn_later(float(_CONFIG.get("duration", 1.0)), _end_measurement, environment)


def _end_measurement(environment: Environment) -> None:
    # Stop the users now, but quit only after locust's CSV writer (once a second) has written
    # the final numbers, and, distributed, after the workers' last reports (every 3 s) arrived.
    _phases["stop"] = time.time()
    if environment.runner is not None:
        environment.runner.stop()
        gevent.spawn_later(float(_CONFIG.get("grace", 1.5)), environment.runner.quit)


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_: Any) -> None:
    _phases["start"] = time.time()
    gevent.spawn_later(float(_CONFIG.get("warmup", 0.0)), _end_warmup, environment)


@events.test_stop.add_listener
def _on_test_stop(environment: Environment, **_: Any) -> None:
    _phases.setdefault("stop", time.time())
    if _HEADER and not isinstance(environment.runner, MasterRunner):
        _write_json(f"tally-{os.getpid()}.json", dict(_tally))
    if not _is_worker(environment):
        _write_json("phases.json", _phases)


@events.request.add_listener
def _on_request(response: Any = None, exception: Any = None, **_: Any) -> None:
    if _HEADER and exception is None and response is not None:
        _tally[response.headers.get(_HEADER) or "unknown"] += 1


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
        with self.client.get(path, headers=self._headers, catch_response=True) as response:
            response.request_meta["response_time"] = (time.perf_counter() - intended) * 1000.0
