"""The primary's side: settings and policy, forking workers, their messages, disconnect and
exit bookkeeping. Its loop and signals are `_loop`'s, a worker's process and channel its `Link`
(`_link`), start methods `_spawn`'s, the acts' checks `_acts`'. Everything runs on that one loop.
"""

from __future__ import annotations

import asyncio
import errno as errno_mod
import os
import socket
import sys
from collections.abc import Callable
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from . import _acts, _channel, _settings
from ._channel import ChannelError
from ._counts import COUNTS
from ._endpoint import Address
from ._events import EventEmitter
from ._handles import HandleRegistry
from ._link import Link
from ._loop import PrimaryLoop
from ._policies import SCHED_NONE, SCHED_REUSEPORT, SCHED_RR, Policy
from ._policies import from_env as policy_from_env
from ._policies import resolve as resolve_policy
from ._spawn import ExecSpawner, ForkServerSpawner, Spawner, worker_stdio
from ._worker import Worker

if TYPE_CHECKING:
    from ._metrics import MetricsServer

__all__ = ["SCHED_NONE", "SCHED_REUSEPORT", "SCHED_RR", "Primary"]

_WORKER_ID_VAR = "CLUSTERLAB_WORKER_ID"


class Primary:
    """State and behaviour of `cluster` in the primary."""

    def __init__(self, events: EventEmitter) -> None:
        self.events = events
        self._policy: Policy | None = None  # from CLUSTERLAB_SCHED_POLICY on first use
        self.frozen = False
        self._forked = False
        self.settings: dict[str, Any] = {}  # cluster.settings (Node's shape)
        self.config: _settings.Settings | None = None  # the same, typed: what forks read
        self.workers: dict[int, Worker] = {}
        self.handles = HandleRegistry(
            lambda: self.loop, lambda: self.policy_choice, self._policy_error
        )
        self._next_id = 0
        self._inspect_offset = 0
        self._links: dict[int, Link] = {}
        self.life = PrimaryLoop(self._live_links, self._abandon)
        self._disconnect_callbacks: list[Callable[[], Any]] = []
        self._spawners: dict[str, Spawner] = {
            "exec": ExecSpawner(),
            "forkserver": ForkServerSpawner(lambda: self.loop, self.life.guard),
        }
        self.metrics: MetricsServer | None = None  # setup_primary(metrics=...)

    # --- the loop (`_loop`) ---------------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self.life.loop

    def _live_links(self) -> list[Link]:
        return list(self._links.values())

    def _abandon(self) -> None:
        """Close every channel and handle; each worker exits when its channel closes."""
        for link in list(self._links.values()):
            link.close_channel()
        self.handles.close_all()
        self.close_forkserver()

    # --- settings and policy ---------------------------------------------------------------

    @property
    def policy_choice(self) -> Policy:
        """The policy handles are made with (CLUSTERLAB_SCHED_POLICY until one is set)."""
        if self._policy is None:
            self._policy = policy_from_env(os.environ)
        return self._policy

    @property
    def policy(self) -> int | str:
        """`cluster.scheduling_policy`: SCHED_RR/NONE/REUSEPORT, else the scheduler's name."""
        return self.policy_choice.public

    def set_policy(self, value: Any) -> None:
        if self.frozen:
            raise RuntimeError(
                "cluster.scheduling_policy is frozen after the first fork() or setup_primary()"
            )
        self._policy = resolve_policy(value)

    def _policy_error(self, exc: BaseException) -> None:
        """A scheduler failed (the connection went to another worker): 'error' on the cluster,
        or stderr when nobody listens; the primary carries on."""

        def report() -> None:
            if self.events.listener_count("error"):
                self.events.emit("error", exc)
            else:
                print(f"clusterlab: scheduler error: {exc!r}", file=sys.stderr)

        self.life.later(report)

    def setup_primary(self, given: dict[str, Any]) -> None:
        policy = None
        given = dict(given)
        if "scheduler" in given:
            if self._forked:
                raise RuntimeError("the scheduler is frozen after the first fork()")
            policy = resolve_policy(given.pop("scheduler"))
        metrics = given.pop("metrics", None)
        merged = _settings.merge(self.settings, given)
        self.life.ensure()
        if metrics is not None:
            self.serve_metrics(metrics)
        if policy is not None:
            self._policy = policy
        self.settings = merged
        self.config = _settings.Settings.of(merged)
        self.frozen = True
        snapshot = MappingProxyType(dict(merged))
        self.life.later(self.events.emit, "setup", snapshot)

    def serve_metrics(self, address: str) -> None:
        """`setup_primary(metrics=)`: serve GET /metrics on "HOST:PORT" from now on; before the
        first fork (so every worker's servers count their requests). ValueError for an address
        that is not HOST:PORT, OSError naming it when it cannot be bound."""
        if self.metrics is not None:
            if address == self.metrics.given:
                return
            raise RuntimeError(f"metrics are already served on {self.metrics.given}")
        if self._forked:
            raise RuntimeError("setup_primary(metrics=) comes before the first fork()")
        from ._metrics import MetricsServer  # prometheus_client only when asked for

        self.metrics = MetricsServer.start(address, self)
        self.handles.count_load = True

    # --- fork ------------------------------------------------------------------------------

    def fork(self, env: dict[str, Any] | None, weight: int = 1) -> Worker:
        if env is not None and not isinstance(env, dict):
            raise TypeError(f"fork(env) expects a dict, got {env!r}")
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
            raise ValueError(f"fork(weight=) must be a positive int, got {weight!r}")
        self.setup_primary({})
        self._forked = True
        settings = self.config
        assert settings is not None  # setup_primary() made it
        settings.program()  # RuntimeError before anything starts if it is not known
        self._next_id += 1
        worker_id = self._next_id
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            proc = self._spawn(worker_id, settings, env or {}, theirs.fileno())
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        worker = Worker(id=worker_id, process=proc, state="none")
        link = Link(self, worker, proc, ours, settings.serialization)
        link.weight = weight
        worker._link = link
        self._links[worker_id] = link
        self.workers[worker_id] = worker
        COUNTS.forks += 1
        self.life.install_signals()
        self.life.later(self.events.emit, "fork", worker)
        return worker

    def _spawn(
        self, worker_id: int, settings: _settings.Settings, env: dict[str, Any], fd: int
    ) -> Any:
        """The worker's process, started by the spawner of settings' start method."""
        child_env = self._child_env(worker_id, settings, env, fd)
        spawner = self._spawners[settings.start_method]
        return spawner.spawn(settings, child_env, fd, worker_stdio(settings))

    def _child_env(
        self, worker_id: int, settings: _settings.Settings, env: dict[str, Any], fd: int
    ) -> dict[str, str]:
        """Our environment, `env`, and what the worker's boot reads: its id, the channel's fd,
        the serialization and its inspector port."""
        child_env = dict(os.environ)
        child_env.update({str(k): str(v) for k, v in env.items()})
        self._inspect_offset += 1
        child_env.update(
            {
                _WORKER_ID_VAR: str(worker_id),
                "CLUSTERLAB_CHANNEL_FD": str(fd),
                "CLUSTERLAB_SERIALIZATION": settings.serialization,
                "CLUSTERLAB_INSPECT_PORT": str(
                    _settings.inspect_port_for(settings.inspect_port, self._inspect_offset)
                ),
                "CLUSTERLAB_INSPECT": "1" if settings.inspect_port is not None else "",
            }
        )
        return child_env

    def close_forkserver(self) -> None:
        """No more forks from the template (it exits once its workers are gone)."""
        self._spawners["forkserver"].close()

    # --- messages from workers -------------------------------------------------------------

    def dispatch(self, link: Link, kind: int, payload: bytes, fds: list[int]) -> None:
        if kind == _channel.INTERNAL:
            self._internal(link, payload, fds)
            return
        try:
            message = _channel.decode_user(kind, payload, link.serialization)
        except ChannelError as exc:
            for fd in fds:
                os.close(fd)
            self.channel_error(link, exc)
            return
        for extra in fds[1:]:
            os.close(extra)
        try:
            handle = _channel.socket_from_fd(fds[0]) if fds else None
        except OSError as exc:  # not a socket (socket_from_fd closed it)
            self.channel_error(
                link, ChannelError(f"a message came with a handle that is not a socket: {exc}")
            )
            return
        link.worker.emit("message", message, handle)
        self.events.emit("message", link.worker, message, handle)

    def _internal(self, link: Link, payload: bytes, fds: list[int]) -> None:
        """An internal message: checked by its act's check, then handled (fds closed after)."""
        try:
            message = _channel.decode_internal(payload)
            act = _ACTS.get(message["act"])
            if act is None:
                raise ChannelError(f"unknown internal message {message['act']!r}")
            check, handle = act
            message = check(message)
        except ChannelError as exc:
            for fd in fds:
                os.close(fd)
            self.channel_error(link, exc)
            return
        try:
            # Outside the try above: an exception from a user's listener is not the worker's.
            handle(self, link, message)
        finally:
            for fd in fds:
                os.close(fd)

    def channel_error(self, link: Link, exc: Exception, fatal: bool = False) -> None:
        """A bad frame from a worker: report it as the worker's 'error'; the primary carries on."""
        worker = link.worker
        if worker.listener_count("error"):
            worker.emit("error", exc)
        else:
            print(f"clusterlab: worker {worker.id}: {exc}", file=sys.stderr)
        if fatal:  # the stream can't be trusted any more: drop the channel (and what it held)
            link.channel.reader.close()
            link.channel_ended()

    def _on_online(self, link: Link, message: dict[str, Any]) -> None:
        link.worker.state = "online"
        link.worker.emit("online")
        self.events.emit("online", link.worker)

    def _on_listening(self, link: Link, message: dict[str, Any]) -> None:
        address = Address(
            message.get("address"), message["port"], message["address_type"], message.get("fd")
        )
        link.worker.state = "listening"
        link.worker.emit("listening", address)
        self.events.emit("listening", link.worker, address)

    def _on_close(self, link: Link, message: dict[str, Any]) -> None:
        self.handles.leave(link, str(message["key"]))

    def _on_exited_after_disconnect(self, link: Link, message: dict[str, Any]) -> None:
        link.worker.exited_after_disconnect = True
        link.write(_channel.internal_frame({"act": "ack", "seq": message.get("seq")}), [], None)

    def _query_server(self, link: Link, message: dict[str, Any]) -> None:
        if link.worker.exited_after_disconnect:
            return  # a disconnecting worker gets no new servers (as Node)
        endpoint = message["endpoint"]
        key = f"{endpoint.base_key}:{message['index']}"
        reply: dict[str, Any] = {"act": "ack", "seq": message.get("seq"), "key": key, "errno": 0}
        fds: list[int] = []
        try:
            fields, handle_fds = self.handles.join(link, key, endpoint)
            reply.update(fields)
            fds = [os.dup(fd) for fd in handle_fds]
        except OSError as exc:
            reply["errno"] = exc.errno or errno_mod.EINVAL
            reply["error"] = exc.strerror or str(exc)
        link.write(_channel.internal_frame(reply, len(fds)), fds, None)

    def pause_handles(self, link: Link) -> None:
        """A worker was told to disconnect: its shared handles are released now; a hand-off
        handle leaves it the connections already handed (its servers serve them as they close)."""
        self.handles.pause(link)

    def remove_handles(self, link: Link) -> None:
        self.handles.remove(link)

    # --- disconnect and exit ---------------------------------------------------------------

    def _remove(self, link: Link) -> None:
        self.workers.pop(link.worker.id, None)
        self._links.pop(link.worker.id, None)

    def on_disconnect(self, link: Link) -> None:
        worker = link.worker
        self.remove_handles(link)
        link.close_retired()
        if link.dead:
            self._remove(link)
        worker.exited_after_disconnect = bool(worker.exited_after_disconnect)
        worker.state = "disconnected"
        try:
            worker.emit("disconnect")
            self.events.emit("disconnect", worker)
        finally:
            self._after_removal()

    def on_exit(self, link: Link, code: int | None, sig: str | None) -> None:
        worker = link.worker
        if not link.connected:
            self.remove_handles(link)
            self._remove(link)
        COUNTS.exited(code, sig)
        self.handles.worker_gone(worker.id)
        worker.exited_after_disconnect = bool(worker.exited_after_disconnect)
        worker.state = "dead"
        try:
            worker.emit("exit", code, sig)
            self.events.emit("exit", worker, code, sig)
        finally:
            self._after_removal()

    def _after_removal(self) -> None:
        if not self._links and self._disconnect_callbacks:
            callbacks, self._disconnect_callbacks = self._disconnect_callbacks, []
            for cb in callbacks:
                self.life.later(cb)
        self.life.check_idle()

    def disconnect_all(self, callback: Callable[[], Any] | None) -> None:
        self.life.ensure()
        links = [link for link in self._links.values() if link.connected]
        for link in links:
            link.disconnect()
        if callback is None:
            return
        if not self._links:
            self.life.later(callback)
        else:
            self._disconnect_callbacks.append(callback)


_Handler = Callable[[Primary, Link, dict[str, Any]], None]
#: Every act a worker may send: its check (`_acts`) and the primary's handler.
_ACTS: dict[str, tuple[Callable[[dict[str, Any]], dict[str, Any]], _Handler]] = {
    "online": (_acts.no_fields, Primary._on_online),
    "queryServer": (_acts.query_server, Primary._query_server),
    "listening": (_acts.listening, Primary._on_listening),
    "close": (_acts.close, Primary._on_close),
    "exitedAfterDisconnect": (_acts.no_fields, Primary._on_exited_after_disconnect),
}
