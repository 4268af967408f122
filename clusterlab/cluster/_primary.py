"""The primary's side: its loop and signals, settings and policy, forking workers, their
messages, disconnect and exit bookkeeping. A worker's process and channel are its `Link`
(`_link`), start methods are `_spawn`'s, the acts' checks `_acts`'.

Everything runs on one asyncio loop in one thread: the caller's running loop when `fork()` is
called from asyncio code, otherwise a private loop that runs when the main script ends (or in
`cluster.run()`). Signal handlers only schedule work on that loop.
"""

from __future__ import annotations

import asyncio
import atexit
import errno as errno_mod
import os
import signal as signal_mod
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from . import _acts, _channel, _settings
from ._channel import ChannelError
from ._counts import COUNTS
from ._endpoint import Address
from ._events import EventEmitter
from ._forkserver import flush_stdio
from ._handles import HandleRegistry
from ._link import Link
from ._policies import SCHED_NONE, SCHED_REUSEPORT, SCHED_RR, Policy
from ._policies import from_env as policy_from_env
from ._policies import resolve as resolve_policy
from ._spawn import ExecSpawner, ForkServerSpawner, Spawner, worker_stdio
from ._worker import Worker

if TYPE_CHECKING:
    from ._metrics import MetricsServer

__all__ = ["SCHED_NONE", "SCHED_REUSEPORT", "SCHED_RR", "Primary"]

_WORKER_ID_VAR = "CLUSTERLAB_WORKER_ID"
#: Seconds a worker gets to finish after SIGINT/SIGTERM to the primary before it is killed.
SHUTDOWN_GRACE = float(os.environ.get("CLUSTERLAB_SHUTDOWN_GRACE", "10"))


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
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._next_id = 0
        self._inspect_offset = 0
        self._links: dict[int, Link] = {}
        self._pending = 0
        self._refs = 0  # cluster.ref(): keep the loop running with no worker alive
        self._idle: asyncio.Future[None] | None = None
        self._disconnect_callbacks: list[Callable[[], Any]] = []
        self._stopping: int | None = None
        self._signals_installed = False
        self._exit_hook = False
        self._in_exit_hook = False
        self._shutdown_started = False
        self._shutdown_started_at = 0.0
        self._spawners: dict[str, Spawner] = {
            "exec": ExecSpawner(),
            "forkserver": ForkServerSpawner(lambda: self.loop, self.guard),
        }
        self.metrics: MetricsServer | None = None  # setup_primary(metrics=...)

    # --- the loop --------------------------------------------------------------------------

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if self.loop is None or (self.loop.is_closed() and not self._links):
            if running is not None:
                self.loop = running
            else:
                self.loop = asyncio.new_event_loop()
                if not self._exit_hook:
                    _register_exit_hook(self._at_exit)
                    self._exit_hook = True
        elif running is not None and running is not self.loop:
            raise RuntimeError(
                "the cluster is bound to another event loop: fork() from one loop only"
            )
        return self.loop

    def guard(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap a loop callback: an exception escaping it is the primary's uncaught exception."""

        def guarded(*args: Any) -> Any:
            try:
                return fn(*args)
            except BaseException as exc:  # noqa: BLE001 - Node's uncaught-exception semantics
                self.fatal(exc)

        return guarded

    def later(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn(*args)` on the loop soon; the loop counts it as pending work."""
        self._pending += 1

        def run() -> None:
            self._pending -= 1
            try:
                fn(*args)
            finally:
                self._check_idle()

        self.loop.call_soon(self.guard(run))

    def fatal(self, exc: BaseException) -> None:
        if isinstance(exc, SystemExit | KeyboardInterrupt):
            code = exc.code if isinstance(exc, SystemExit) else 130
            self._hard_exit(code if isinstance(code, int) else 1)
        traceback.print_exception(exc)
        self._hard_exit(1)

    def _hard_exit(self, code: int) -> None:
        """Close every channel (workers exit when theirs closes) and leave now."""
        self._abandon()
        flush_stdio()
        os._exit(code)

    def run(self) -> None:
        """Run the loop until no worker is alive and nothing is pending."""
        if self.loop is None:
            return
        if self.loop.is_running():
            raise RuntimeError("cluster.run() cannot be called while the cluster's loop is running")
        self._install_signals()
        self.loop.run_until_complete(self._until_idle())

    async def _until_idle(self) -> None:
        self._idle = self.loop.create_future()
        self._check_idle()
        try:
            await self._idle
        finally:
            self._idle = None
        if self._stopping is not None:
            flush_stdio()
            os._exit(self._stopping)

    def _check_idle(self) -> None:
        if (
            self._idle is not None
            and not self._idle.done()
            and not self._links
            and self._pending == 0
            and (self._refs == 0 or self._stopping is not None)
        ):
            self._idle.set_result(None)

    def ref(self) -> None:
        """Keep the loop running while no worker is alive, until `unref()` (libuv's ref)."""
        self._ensure_loop()
        self._refs += 1

    def unref(self) -> None:
        """Undo one `ref()`: the loop may end once no worker is alive and nothing is pending."""
        if self._refs == 0:
            raise RuntimeError("cluster.unref() without a cluster.ref() to undo")
        self._refs -= 1
        self._check_idle()

    def _at_exit(self) -> None:
        """The main script ended: keep serving the workers, as Node's primary does."""
        self._in_exit_hook = True
        if not self._links and self._pending == 0 and not self._refs:
            if self._stopping is not None:
                flush_stdio()
                os._exit(self._stopping)
            return
        last = getattr(sys, "last_value", None)
        if last is not None and not isinstance(last, KeyboardInterrupt):
            self._abandon()  # the main script died: take the workers down with it
            return
        if isinstance(last, KeyboardInterrupt):
            self._stopping = 130
        if self.loop.is_closed() or self.loop.is_running():
            self._abandon()  # the caller's own loop is gone: nothing can serve the workers
            return
        if self._stopping is not None:
            self.loop.call_soon(self._begin_shutdown, self._stopping)
        self.run()

    def _abandon(self) -> None:
        """Close every channel and handle; each worker exits when its channel closes."""
        for link in list(self._links.values()):
            link.close_channel()
        self.handles.close_all()
        self.close_forkserver()

    # --- signals ---------------------------------------------------------------------------

    def _install_signals(self) -> None:
        if self._signals_installed or threading.current_thread() is not threading.main_thread():
            return
        self._signals_installed = True
        for signum, code in ((signal_mod.SIGINT, 130), (signal_mod.SIGTERM, 143)):
            current = signal_mod.getsignal(signum)
            if current in (signal_mod.SIG_DFL, signal_mod.default_int_handler):
                signal_mod.signal(signum, self._make_handler(code))

    def _make_handler(self, code: int) -> Callable[[int, Any], None]:
        def handler(signum: int, frame: Any) -> None:
            loop = self.loop
            if (
                loop is not None
                and not loop.is_closed()
                and (loop.is_running() or self._in_exit_hook)
            ):
                # Running, or about to run from the exit hook: raising there would be lost.
                self._stopping = code
                loop.call_soon_threadsafe(self._begin_shutdown, code)
                return
            # The main script is still running: stop it; the exit hook shuts the cluster down.
            self._stopping = code
            if signum == signal_mod.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(code)

        return handler

    def _begin_shutdown(self, code: int) -> None:
        """SIGINT/SIGTERM: disconnect every worker, kill stragglers after the grace period.

        A second signal (a second later or more: tools like `timeout` signal the process and
        its group at once) kills the remaining workers at once.
        """
        now = time.monotonic()
        if self._stopping is not None and self._shutdown_started:
            if now - self._shutdown_started_at >= 1.0:
                self._kill_stragglers()
            return
        self._stopping = code
        self._shutdown_started = True
        self._shutdown_started_at = now
        for link in list(self._links.values()):
            link.disconnect()
        self.loop.call_later(SHUTDOWN_GRACE, self.guard(self._kill_stragglers))
        if self._idle is None:
            self.loop.create_task(self._until_idle())
        self._check_idle()

    def _kill_stragglers(self) -> None:
        for link in list(self._links.values()):
            link.kill("SIGKILL")

    def poll_exit(self, link: Link) -> None:
        def check() -> None:
            if link.proc.poll() is not None:
                link.check_exit()
            else:
                self.loop.call_later(0.05, self.guard(check))

        self.loop.call_later(0.05, self.guard(check))

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

        self.later(report)

    def setup_primary(self, given: dict[str, Any]) -> None:
        policy = None
        given = dict(given)
        if "scheduler" in given:
            if self._forked:
                raise RuntimeError("the scheduler is frozen after the first fork()")
            policy = resolve_policy(given.pop("scheduler"))
        metrics = given.pop("metrics", None)
        merged = _settings.merge(self.settings, given)
        self._ensure_loop()
        if metrics is not None:
            self.serve_metrics(metrics)
        if policy is not None:
            self._policy = policy
        self.settings = merged
        self.config = _settings.Settings.of(merged)
        self.frozen = True
        snapshot = MappingProxyType(dict(merged))
        self.later(self.events.emit, "setup", snapshot)

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
        self._install_signals()
        self.later(self.events.emit, "fork", worker)
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
                self.later(cb)
        self._check_idle()

    def disconnect_all(self, callback: Callable[[], Any] | None) -> None:
        self._ensure_loop()
        links = [link for link in self._links.values() if link.connected]
        for link in links:
            link.disconnect()
        if callback is None:
            return
        if not self._links:
            self.later(callback)
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


def _register_exit_hook(hook: Callable[[], None]) -> None:
    """Run `hook` when the main script ends, before non-daemon threads are joined.

    A thread of the primary may be waiting for a worker's event: the loop must run meanwhile.
    """
    register = getattr(threading, "_register_atexit", None)
    if register is None:
        atexit.register(hook)
        return
    try:
        register(hook)
    except RuntimeError:  # already shutting down
        atexit.register(hook)
