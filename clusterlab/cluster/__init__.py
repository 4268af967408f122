"""`cluster`: Node.js's `node:cluster`, spelled the Python way.

This module object is the `cluster` of the contract: `from clusterlab import cluster`, then
`cluster.fork()`, `cluster.on('exit', ...)`, `cluster.scheduling_policy = cluster.SCHED_NONE`.
Whether this process is the primary or a worker is settled when the module is imported.
"""

from __future__ import annotations

import os
import socket
import sys
import types
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from . import _child
from ._endpoint import Address, resolve
from ._events import EventEmitter
from ._listeners import ListenerClosedError
from ._policies import RendezvousHash
from ._primary import SCHED_NONE, SCHED_REUSEPORT, SCHED_RR, Primary
from ._scheduler import Scheduler, SchedulerError, WorkerState
from ._worker import Worker

__all__ = [
    "SCHED_NONE",
    "SCHED_RR",
    "SCHED_REUSEPORT",
    "Address",
    "EventEmitter",
    "ListenerClosedError",
    "RendezvousHash",
    "Scheduler",
    "SchedulerError",
    "Worker",
    "WorkerState",
    "fork",
    "setup_primary",
    "disconnect",
    "run",
    "ref",
    "unref",
    "listen",
    "round_robin_stats",
]

if TYPE_CHECKING:
    # What the module object offers at run time (its class adds properties and Node's
    # EventEmitter methods), spelled out for type checkers.
    from ._events import Listener

    is_primary: bool
    is_master: bool
    is_worker: bool
    worker: Worker | None
    workers: dict[int, Worker] | None
    settings: Mapping[str, Any]
    scheduling_policy: int | str

    def on(event: str, fn: Listener) -> EventEmitter: ...
    def once(event: str, fn: Listener) -> EventEmitter: ...
    def off(event: str, fn: Listener) -> EventEmitter: ...
    def remove_listener(event: str, fn: Listener) -> EventEmitter: ...
    def add_listener(event: str, fn: Listener) -> EventEmitter: ...
    def emit(event: str, *args: Any) -> bool: ...
    def listeners(event: str) -> list[Listener]: ...
    def listener_count(event: str) -> int: ...
    def remove_all_listeners(event: str | None = None) -> EventEmitter: ...


_runtime = _child.start_from_env() if "CLUSTERLAB_WORKER_ID" in os.environ else _child.runtime()


class _ClusterModule(types.ModuleType, EventEmitter):
    """Gives the module Node's read-only and frozen properties."""

    @property
    def is_primary(self) -> bool:
        return _runtime is None

    @property
    def is_master(self) -> bool:
        """Deprecated alias of `is_primary`."""
        return _runtime is None

    @property
    def is_worker(self) -> bool:
        return _runtime is not None

    @property
    def worker(self) -> Worker | None:
        """This process's Worker, inside a worker; None in the primary."""
        return _runtime.worker if _runtime is not None else None

    @property
    def workers(self) -> dict[int, Worker] | None:
        """Live workers by id, in the primary; None inside a worker."""
        return _primary.workers if _primary is not None else None

    @property
    def settings(self) -> Mapping[str, Any]:
        if _primary is None:
            return MappingProxyType({})
        return MappingProxyType(_primary.settings)

    @property
    def scheduling_policy(self) -> int | str:
        """SCHED_RR, SCHED_NONE or SCHED_REUSEPORT; under another scheduler, its name."""
        return _primary.policy if _primary is not None else SCHED_RR

    @scheduling_policy.setter
    def scheduling_policy(self, value: Any) -> None:
        if _primary is None:
            raise RuntimeError("scheduling_policy is set in the primary")
        _primary.set_policy(value)


_module = sys.modules[__name__]
_module.__class__ = _ClusterModule
EventEmitter.__init__(_module)  # type: ignore[arg-type]
_events: EventEmitter = _module  # type: ignore[assignment]
_primary: Primary | None = Primary(_events) if _runtime is None else None


def _adopt_runtime(runtime: _child.ChildRuntime) -> None:
    """Become a worker after the module was imported as a primary (a fork-server child)."""
    global _runtime, _primary
    _runtime, _primary = runtime, None


def _need_primary(name: str) -> Primary:
    if _primary is None:
        raise RuntimeError(f"cluster.{name}() can only be called in the primary")
    return _primary


def setup_primary(settings: Mapping[str, Any] | None = None, **kw: Any) -> None:
    """Set defaults for later forks (cumulative) and emit 'setup' with a copy.

    ``scheduler=`` (an addition to Node, not kept in `settings`): how primary-distributed
    handles pick a worker: a built-in name ("rr", "least-conn", "p2c", "jiq", "hash",
    "hash-bounded", "weighted", "random"; also "none" or "reuseport"), a `Scheduler` subclass or
    instance, or
    "package.module:Name". ValueError for an unknown name, ImportError for a "module:Name" that
    does not import; frozen after the first fork().

    ``metrics=`` (an addition to Node, not kept in `settings`): "HOST:PORT" ("[::1]:PORT" for
    IPv6; port 0: any free one) to serve GET /metrics in Prometheus text format from this
    primary (docs/metrics.md); before the first fork(). ValueError for another form, OSError
    naming the address when it cannot be bound.
    """
    given = dict(settings or {})
    given.update(kw)
    _need_primary("setup_primary").setup_primary(given)


setup_master = setup_primary


def fork(env: Mapping[str, Any] | None = None, *, weight: int = 1) -> Worker:
    """Start a worker running `settings['exec']` with `os.environ` plus `env`.

    ``weight`` (an addition to Node): its share under weighted schedulers ("weighted").
    """
    return _need_primary("fork").fork(dict(env) if env is not None else None, weight)


def disconnect(callback: Callable[[], Any] | None = None) -> None:
    """Disconnect every worker; `callback()` once all have disconnected and exited."""
    _need_primary("disconnect").disconnect_all(callback)


def run() -> None:
    """Run the primary's loop until no worker is alive and nothing is pending."""
    _need_primary("run").life.run()


def ref() -> None:
    """Keep the primary's loop running while no worker is alive (`run()` and the end of the
    main script wait), until a matching `unref()`: libuv's ref, for a primary that will fork
    again later (a supervisor waiting out a restart's backoff). A SIGINT/SIGTERM shutdown of
    the cluster does not wait for it."""
    _need_primary("ref").life.ref()


def unref() -> None:
    """Undo one `ref()`; RuntimeError when there is none to undo."""
    _need_primary("unref").life.unref()


def round_robin_stats() -> dict[str, int]:
    """Hand-off counters of this primary's primary-distributed handles, closed ones included:
    accepted, handed, requeued, dropped, policy_errors and queued (now).

    ``accepted`` connections taken off listeners, ``handed`` hand-offs to workers (a connection
    read back from a leaving worker and handed on counts twice), ``requeued`` connections read
    back from workers that left before taking them, ``dropped`` connections closed unserved
    because no worker was left to take them (the "queued connections lost" figure of a crash
    experiment), ``policy_errors`` times a scheduler raised or picked a worker that could not
    take the connection (each went to the next worker in turn), ``queued`` those waiting now.
    """
    if _primary is None:
        return {
            "accepted": 0,
            "handed": 0,
            "requeued": 0,
            "dropped": 0,
            "policy_errors": 0,
            "queued": 0,
        }
    return _primary.handles.stats()


def listen(
    port: int = 0,
    host: str | None = None,
    *,
    backlog: int = 511,
    path: str | os.PathLike[str] | None = None,
    udp: bool = False,
    ipv6_only: bool = False,
    exclusive: bool = False,
    reuse_addr: bool = False,
) -> socket.socket:
    """A listening socket for the endpoint, shared with the other workers per the policy.

    In the primary this is a plain bound socket. Bind errors raise OSError with their errno.
    ``reuse_addr=True`` (with ``udp=True``, Node's dgram ``reuseAddr``): the datagram socket is
    bound with SO_REUSEADDR, so other such sockets may bind the same port.
    """
    endpoint = resolve(
        port,
        host,
        backlog=backlog,
        path=path,
        udp=udp,
        ipv6_only=ipv6_only,
        reuse_addr=reuse_addr,
    )
    if _runtime is not None:
        return _runtime.listen(endpoint, exclusive)
    from ._endpoint import bind

    return bind(endpoint)


def _register_server(close_gracefully: Callable[[], None]) -> Callable[[], None]:
    """For `clusterlab.servers`: have disconnect close this server gracefully (worker only)."""
    if _runtime is None:
        return lambda: None
    return _runtime.register_server(close_gracefully)
