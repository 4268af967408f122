"""The primary's Prometheus endpoint (`setup_primary(metrics="HOST:PORT")`): GET /metrics.

Nothing is counted twice: at each scrape a snapshot of what the primary already keeps (its
counts, the handle registry, the workers' shared-memory load counters) is taken on its loop,
then rendered by a prometheus_client collector in the server's own thread.
"""

from __future__ import annotations

import concurrent.futures
import errno
import os
import socket
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import psutil
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .._parallelism import available_parallelism
from ._counts import COUNTS
from ._round_robin import HANDOFF_FIELDS

if TYPE_CHECKING:
    from ._primary import Primary

#: Seconds a scrape waits for the primary's loop to take the snapshot (a loop that is this
#: busy answers 503, and Prometheus marks the target down).
SNAPSHOT_TIMEOUT = 5.0
#: Supervisor figures exported: `Supervisor.stats` key, metric name, help.
_SUPERVISOR = (
    ("restarts", "restarts", "restarts scheduled by supervisors"),
    ("refused", "restarts_refused", "exits not restarted because of the restart limit"),
    ("hang", "hangs", "workers killed because their heartbeat stopped"),
)
#: Per-worker figures: name, stats key, kind, help.
_PER_WORKER = (
    ("requests", "requests", "counter", "requests received (by the servers of clusterlab.servers)"),
    ("requests_in_flight", "in_flight", "gauge", "requests being served now"),
    ("open_connections", "open", "gauge", "connections handed to the worker and not yet closed"),
    ("connections_handed", "handed", "counter", "connections handed to the worker"),
    ("connections_taken", "taken", "counter", "connections the worker took from its queue"),
    ("connections_pending", "pending", "gauge", "connections handed and not yet taken"),
)


@dataclass(frozen=True)
class Snapshot:
    """The primary's figures at one moment (taken on its loop)."""

    workers_alive: int
    forks: int
    exits: Mapping[tuple[str, str], int]
    frames: Mapping[str, int]
    supervisor: Mapping[str, int]
    workers: Mapping[int, Mapping[str, int | None]]
    endpoints: Mapping[tuple[str, str], Mapping[str, int]]
    #: CPU seconds (user + system) of the primary and of each live worker: what a lab on
    #: another host needs to tell a target-bound run from one its load limited
    primary_cpu_s: float = 0.0
    worker_cpu_s: Mapping[int, float] | None = None


def take_snapshot(primary: Primary) -> Snapshot:
    alive = sum(1 for link in list(primary._links.values()) if not link.dead)
    return Snapshot(
        workers_alive=alive,
        forks=COUNTS.forks,
        exits=dict(COUNTS.exits),
        frames={"from_workers": COUNTS.frames_received, "to_workers": COUNTS.frames_sent},
        supervisor={
            key: sum(stats.get(key, 0) for stats in list(COUNTS.supervisors))
            for key, _, _ in _SUPERVISOR
        },
        workers=primary.handles.worker_stats(),
        endpoints=primary.handles.endpoint_stats(),
        primary_cpu_s=_own_cpu_seconds(),
        worker_cpu_s=_worker_cpu_seconds(primary),
    )


def _own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def _worker_cpu_seconds(primary: Primary) -> dict[int, float]:
    """Each live worker's CPU seconds so far (a worker that ended meanwhile is left out)."""
    seconds = {}
    for worker_id, link in list(primary._links.items()):
        if link.dead:
            continue
        try:
            cpu = psutil.Process(link.proc.pid).cpu_times()
        except psutil.Error:
            continue
        seconds[worker_id] = cpu.user + cpu.system
    return seconds


def families(snap: Snapshot) -> Iterator[Metric]:
    """The snapshot as Prometheus metric families (every family, even with no sample)."""
    yield GaugeMetricFamily(
        "clusterlab_workers_alive", "worker processes alive", snap.workers_alive
    )
    yield CounterMetricFamily("clusterlab_worker_forks", "workers forked", snap.forks)
    exits = CounterMetricFamily(
        "clusterlab_worker_exits", "worker exits by exit code and signal", labels=["code", "signal"]
    )
    for (code, sig), count in sorted(snap.exits.items()):
        exits.add_metric([code, sig], count)
    yield exits
    frames = CounterMetricFamily(
        "clusterlab_ipc_messages", "frames on the workers' channels", labels=["direction"]
    )
    for direction, count in snap.frames.items():
        frames.add_metric([direction], count)
    yield frames
    for key, name, text in _SUPERVISOR:
        yield CounterMetricFamily(f"clusterlab_supervisor_{name}", text, snap.supervisor[key])
    yield from _worker_families(snap.workers)
    yield from _endpoint_families(snap.endpoints)
    yield from _cpu_families(snap)


def _cpu_families(snap: Snapshot) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "clusterlab_host_cpus",
        "CPUs this primary may use (available_parallelism())",
        available_parallelism(),
    )
    yield CounterMetricFamily(
        "clusterlab_primary_cpu_seconds", "CPU seconds of the primary process", snap.primary_cpu_s
    )
    family = CounterMetricFamily(
        "clusterlab_worker_cpu_seconds", "CPU seconds of each live worker", labels=["worker"]
    )
    for worker_id, seconds in sorted((snap.worker_cpu_s or {}).items()):
        family.add_metric([str(worker_id)], seconds)
    yield family


def _worker_families(workers: Mapping[int, Mapping[str, int | None]]) -> Iterator[Metric]:
    for name, key, kind, text in _PER_WORKER:
        family: CounterMetricFamily | GaugeMetricFamily
        if kind == "counter":
            family = CounterMetricFamily(f"clusterlab_worker_{name}", text, labels=["worker"])
        else:
            family = GaugeMetricFamily(f"clusterlab_worker_{name}", text, labels=["worker"])
        for worker_id, row in sorted(workers.items()):
            value = row.get(key)
            if value is not None:
                family.add_metric([str(worker_id)], value)
        yield family


def _endpoint_families(endpoints: Mapping[tuple[str, str], Mapping[str, int]]) -> Iterator[Metric]:
    labels = ["endpoint", "policy"]
    for field in HANDOFF_FIELDS:
        family = CounterMetricFamily(
            f"clusterlab_handoff_{field}", f"hand-off counter {field!r}", labels=labels
        )
        for key, row in sorted(endpoints.items()):
            family.add_metric(list(key), row[field])
        yield family
    queued = GaugeMetricFamily(
        "clusterlab_handoff_queued", "connections accepted, waiting for a worker", labels=labels
    )
    for key, row in sorted(endpoints.items()):
        queued.add_metric(list(key), row["queued"])
    yield queued


class _ClusterCollector(Collector):
    def __init__(self, primary: Primary) -> None:
        self._primary = primary

    def collect(self) -> Iterator[Metric]:
        return families(self._snapshot())

    def _snapshot(self) -> Snapshot:
        """Taken on the primary's loop when it runs (its state is only changed there)."""
        primary = self._primary
        loop = primary.loop
        if loop is None or loop.is_closed() or not loop.is_running():
            return take_snapshot(primary)
        done: concurrent.futures.Future[Snapshot] = concurrent.futures.Future()

        def take() -> None:
            try:
                done.set_result(take_snapshot(primary))
            except BaseException as exc:  # noqa: BLE001 - handed to the scraping thread
                done.set_exception(exc)

        loop.call_soon_threadsafe(take)
        return done.result(timeout=SNAPSHOT_TIMEOUT)


def parse_address(value: Any) -> tuple[str, int]:
    """("host", port) from "HOST:PORT" or "[IPv6]:PORT"; ValueError otherwise (no default
    host: the endpoint binds only where it is told)."""
    text = value if isinstance(value, str) else ""
    host, _, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535 or "[" in host:
        raise ValueError(
            f"setup_primary(metrics=): expected HOST:PORT (e.g. 127.0.0.1:9464), got {value!r}"
        )
    return host, int(port)


class _Handler(BaseHTTPRequestHandler):
    """GET /metrics; another path is 404, another method 405."""

    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.split("?", 1)[0] != "/metrics":
            self._answer(HTTPStatus.NOT_FOUND, b"only /metrics is served here\n")
            return
        try:
            body = generate_latest(self.server.registry)
        except (TimeoutError, RuntimeError) as exc:
            self._answer(HTTPStatus.SERVICE_UNAVAILABLE, f"primary busy: {exc!r}\n".encode())
            return
        self._answer(HTTPStatus.OK, body, CONTENT_TYPE_LATEST)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("do_"):  # every other method
            return self._not_allowed
        raise AttributeError(name)

    def _not_allowed(self) -> None:
        self._answer(HTTPStatus.METHOD_NOT_ALLOWED, b"only GET is served here\n")

    def _answer(
        self, status: HTTPStatus, body: bytes, kind: str = "text/plain; charset=utf-8"
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        if status == HTTPStatus.METHOD_NOT_ALLOWED:
            self.send_header("Allow", "GET")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    registry: CollectorRegistry


class MetricsServer:
    """The /metrics endpoint, served from a daemon thread of the primary."""

    def __init__(self, given: str, server: _Server) -> None:
        self.given = given
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="clusterlab-metrics", daemon=True
        )
        self._thread.start()

    @classmethod
    def start(cls, given: str, primary: Primary) -> MetricsServer:
        """Bind `given` ("HOST:PORT") and serve; OSError naming the address when it cannot."""
        host, port = parse_address(given)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = type("_Bound", (_Server,), {"address_family": family})
        try:
            server = server_class((host, port), _Handler)
        except OSError as exc:
            number = exc.errno or errno.EADDRNOTAVAIL
            why = exc.strerror or str(exc)
            raise OSError(number, f"cannot serve metrics on {given}: {why}") from None
        server.registry = CollectorRegistry(auto_describe=False)
        server.registry.register(_ClusterCollector(primary))
        return cls(given, server)

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) actually bound (port 0 given: the one the system chose)."""
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
