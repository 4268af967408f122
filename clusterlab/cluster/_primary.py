"""The primary's side: forking workers, their channels, exit bookkeeping and shared handles.

Everything runs on one asyncio loop in one thread: the caller's running loop when `fork()` is
called from asyncio code, otherwise a private loop that runs when the main script ends (or in
`cluster.run()`). Signal handlers only schedule work on that loop.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import errno as errno_mod
import os
import signal as signal_mod
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from . import _channel, _settings
from ._channel import ChannelError, FrameReader
from ._counts import COUNTS
from ._endpoint import Address, Endpoint
from ._events import EventEmitter
from ._forkserver import (
    BASE_PRELOAD,
    ForkServer,
    ForkServerError,
    TemplateChild,
    flush_stdio,
    program_imports,
)
from ._handles import HandleRegistry
from ._policies import SCHED_NONE, SCHED_REUSEPORT, SCHED_RR, Policy
from ._policies import from_env as policy_from_env
from ._policies import resolve as resolve_policy
from ._worker import Worker

if TYPE_CHECKING:
    from ._metrics import MetricsServer

__all__ = ["SCHED_NONE", "SCHED_REUSEPORT", "SCHED_RR", "Primary"]

_WORKER_ID_VAR = "CLUSTERLAB_WORKER_ID"
#: Seconds a worker gets to finish after SIGINT/SIGTERM to the primary before it is killed.
SHUTDOWN_GRACE = float(os.environ.get("CLUSTERLAB_SHUTDOWN_GRACE", "10"))


def _signal_number(sig: str | int) -> int:
    if isinstance(sig, int):
        return sig
    name = sig.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(signal_mod.Signals[name])
    except KeyError:
        raise ValueError(f"unknown signal {sig!r}") from None


class _Link:
    """The primary's end of one worker: process, channel and its place in shared handles."""

    def __init__(
        self,
        primary: Primary,
        worker: Worker,
        proc: subprocess.Popen[bytes] | TemplateChild,
        sock: socket.socket,
        serialization: str,
    ) -> None:
        self.primary = primary
        self.serialization = serialization
        self.worker = worker
        self.proc = proc
        self.sock = sock
        self.reader = FrameReader()
        self.connected = True
        self.dead = False
        self.keys: set[str] = set()
        self.weight = 1  # cluster.fork(weight=...): for weighted schedulers
        self._retired: list[socket.socket] = []
        self._out: list[
            tuple[memoryview, list[int], Callable[[BaseException | None], Any] | None]
        ] = []
        self._writing = False
        loop = primary.loop
        loop.add_reader(sock.fileno(), primary.guard(self._on_readable))
        self.pidfd: int | None = None
        if isinstance(proc, TemplateChild):
            # The fork server is its parent: it reaps it and reports the status (a pidfd, if
            # there is one, only signals it safely).
            proc.on_exit = primary.guard(self._on_exit)
            with contextlib.suppress(AttributeError, OSError):
                self.pidfd = os.pidfd_open(proc.pid)
            if proc.finished:
                loop.call_soon(proc.on_exit)
            return
        try:
            self.pidfd = os.pidfd_open(proc.pid)
            loop.add_reader(self.pidfd, primary.guard(self._on_exit))
        except (AttributeError, OSError):  # no pidfd: poll for the exit instead
            primary.poll_exit(self)

    # --- Worker methods (primary side) -----------------------------------------------------

    def send(
        self, message: Any, handle: Any, callback: Callable[[BaseException | None], Any] | None
    ) -> bool:
        kind, payload = _channel.encode_user(message, self.serialization)
        fds = [os.dup(_channel.handle_fd(handle))] if handle is not None else []
        return self.write(_channel.frame(kind, payload, len(fds)), fds, callback)

    def kill(self, sig: str | int) -> None:
        number = _signal_number(sig)
        if self.dead or self.proc.returncode is not None:
            return
        try:
            if self.pidfd is not None:
                signal_mod.pidfd_send_signal(self.pidfd, number)
            else:
                self.proc.send_signal(number)
        except ProcessLookupError:
            pass

    def disconnect(self) -> None:
        if not self.connected:
            return
        self.worker.exited_after_disconnect = True
        self.write(_channel.internal_frame({"act": "disconnect"}), [], None)
        self.primary.pause_handles(self)

    def is_connected(self) -> bool:
        return self.connected

    def retire(self, sock: socket.socket) -> None:
        """Keep a socket open until this worker is gone (see RoundRobinHandle._release)."""
        if self.connected and not self.dead:
            self._retired.append(sock)
        else:
            sock.close()

    def close_retired(self) -> None:
        for sock in self._retired:
            sock.close()
        self._retired.clear()

    def is_dead(self) -> bool:
        return self.dead

    # --- the channel -----------------------------------------------------------------------

    def write(
        self, data: bytes, fds: list[int], callback: Callable[[BaseException | None], Any] | None
    ) -> bool:
        loop = self.primary.loop
        if not self.connected:
            for fd in fds:
                os.close(fd)
            if callback is not None:
                loop.call_soon(self.primary.guard(callback), ChannelClosed())
            return False
        COUNTS.frames_sent += 1
        self._out.append((memoryview(data), fds, callback))
        if not self._writing:
            self._flush()
        return True

    def _flush(self) -> None:
        loop = self.primary.loop
        out = self._out
        while out:
            view, fds, callback = out[0]
            if not fds and len(out) > 1 and not out[1][1]:
                self._coalesce()
                view, fds, callback = out[0]
            try:
                sent = _channel.send_some(self.sock, view, fds)
            except BlockingIOError:
                break
            except OSError as exc:
                self._fail_writes(exc)
                return
            if fds:
                for fd in fds:
                    os.close(fd)
                out[0] = (view[sent:], [], callback)
            else:
                out[0] = (view[sent:], fds, callback)
            if sent < len(view):
                break
            out.pop(0)
            if callback is not None:
                loop.call_soon(self.primary.guard(callback), None)
        want = bool(out)
        if want != self._writing:
            if want:
                loop.add_writer(self.sock.fileno(), self.primary.guard(self._flush))
            else:
                loop.remove_writer(self.sock.fileno())
            self._writing = want

    def _coalesce(self) -> None:
        """Join queued frames without descriptors into one write (up to 1 MiB)."""
        out = self._out
        parts: list[memoryview] = []
        callbacks: list[Callable[[BaseException | None], Any]] = []
        size = 0
        while out and not out[0][1] and size < 1 << 20:
            view, _, cb = out.pop(0)
            parts.append(view)
            size += len(view)
            if cb is not None:
                callbacks.append(cb)

        def done(error: BaseException | None) -> None:
            for cb in callbacks:
                cb(error)

        out.insert(0, (memoryview(b"".join(parts)), [], done if callbacks else None))

    def _fail_writes(self, exc: BaseException) -> None:
        loop = self.primary.loop
        for _, fds, callback in self._out:
            for fd in fds:
                os.close(fd)
            if callback is not None:
                loop.call_soon(self.primary.guard(callback), exc)
        self._out.clear()
        if self._writing:
            loop.remove_writer(self.sock.fileno())
            self._writing = False

    def _on_readable(self) -> None:
        self._read_once()

    def _read_once(self) -> bool:
        """Read and dispatch what is there; False when nothing could be read."""
        try:
            data, fds = _channel.recv_some(self.sock)
        except (BlockingIOError, InterruptedError):
            return False
        except ChannelError as exc:
            self.primary.channel_error(self, exc, fatal=True)
            return False
        except OSError:
            data, fds = b"", []
        if not data:
            self._on_disconnect()
            return False
        self.reader.feed(data, fds)
        try:
            frames = self.reader.frames()
            COUNTS.frames_received += len(frames)
            for kind, payload, frame_fds in frames:
                self.primary.dispatch(self, kind, payload, frame_fds)
        except ChannelError as exc:
            self.primary.channel_error(self, exc, fatal=True)
            return False
        return True

    def close_channel(self) -> None:
        """Close our end; the worker sees the channel close."""
        if self.sock.fileno() >= 0:
            loop = self.primary.loop
            loop.remove_reader(self.sock.fileno())
            if self._writing:
                loop.remove_writer(self.sock.fileno())
                self._writing = False
            self.sock.close()
        self.reader.close()

    def _on_disconnect(self) -> None:
        if not self.connected:
            return
        self.connected = False
        left = self.reader.pending()
        if left:
            self.primary.channel_error(
                self, ChannelError(f"the channel closed in the middle of a frame ({left} bytes)")
            )
        self._fail_writes(ChannelClosed())
        self.close_channel()
        self.primary.on_disconnect(self)

    def _on_exit(self) -> None:
        if self.dead:
            return
        code = self.proc.poll()
        if code is None and not getattr(self.proc, "finished", False):
            return
        # Whatever the worker wrote before dying is read first; its end closed when it died,
        # so the channel ends here too (even if a descendant inherited a copy of it).
        while self.connected and self._read_once():
            pass
        self._on_disconnect()
        self.dead = True
        if self.pidfd is not None:
            self.primary.loop.remove_reader(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = None
        sig_name = None
        exit_code: int | None = code
        if code is not None and code < 0:
            exit_code = None
            try:
                sig_name = signal_mod.Signals(-code).name
            except ValueError:
                sig_name = f"SIG{-code}"
        self.primary.on_exit(self, exit_code, sig_name)


class ChannelClosed(ConnectionError):
    """The worker's channel is closed."""

    def __init__(self) -> None:
        super().__init__(errno_mod.EPIPE, "channel closed")


class Primary:
    """State and behaviour of `cluster` in the primary."""

    def __init__(self, events: EventEmitter) -> None:
        self.events = events
        self._policy: Policy | None = None  # from CLUSTERLAB_SCHED_POLICY on first use
        self.frozen = False
        self._forked = False
        self.settings: dict[str, Any] = {}
        self.workers: dict[int, Worker] = {}
        self.handles = HandleRegistry(
            lambda: self.loop, lambda: self.policy_choice, self._policy_error
        )
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._next_id = 0
        self._inspect_offset = 0
        self._links: dict[int, _Link] = {}
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
        self._forkserver: ForkServer | None = None
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

    def poll_exit(self, link: _Link) -> None:
        def check() -> None:
            if link.proc.poll() is not None:
                link._on_exit()
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
        settings = self.settings
        if settings["exec"] is None:
            raise RuntimeError(
                "cannot tell what workers should run (the primary was not started from a file): "
                "call cluster.setup_primary(exec='path/to/script.py') first"
            )
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
        link = _Link(self, worker, proc, ours, settings["serialization"])
        link.weight = weight
        worker._link = link
        self._links[worker_id] = link
        self.workers[worker_id] = worker
        COUNTS.forks += 1
        self._install_signals()
        self.later(self.events.emit, "fork", worker)
        return worker

    def _spawn(
        self, worker_id: int, settings: dict[str, Any], env: dict[str, Any], fd: int
    ) -> subprocess.Popen[bytes] | TemplateChild:
        child_env = self._child_env(worker_id, settings, env, fd)
        stdio = _worker_stdio(settings)
        if settings["start_method"] == "forkserver":
            return self._fork_from_template(settings, child_env, fd, stdio)
        return _exec_worker(settings, child_env, fd, stdio)

    def _child_env(
        self, worker_id: int, settings: dict[str, Any], env: dict[str, Any], fd: int
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
                "CLUSTERLAB_SERIALIZATION": settings["serialization"],
                "CLUSTERLAB_INSPECT_PORT": str(
                    _settings.inspect_port_for(settings["inspect_port"], self._inspect_offset)
                ),
                "CLUSTERLAB_INSPECT": "1" if settings["inspect_port"] is not None else "",
            }
        )
        return child_env

    def _fork_from_template(
        self,
        settings: dict[str, Any],
        child_env: dict[str, str],
        fd: int,
        stdio: tuple[Any, Any, Any],
    ) -> TemplateChild:
        """The worker forked by the template process; a template that died is replaced once."""
        argv = [settings["exec"], *settings["args"]]
        attempts = 2
        while True:
            server = self._forkserver_for(settings)
            try:
                return server.spawn(
                    child_env,
                    argv,
                    settings["cwd"],
                    settings["uid"],
                    settings["gid"],
                    fd,
                    stdio,
                )
            except (ForkServerError, ConnectionError):
                server.kill()  # it died: start another once
                attempts -= 1
                if not attempts:
                    raise

    def _forkserver_for(self, settings: dict[str, Any]) -> ForkServer:
        """The template process for these settings; a new one when they changed."""
        exec_ = settings["exec"]
        preload = settings["preload"]
        key = (
            exec_,
            tuple(settings["exec_argv"]),
            settings["cwd"],
            None if preload is None else tuple(preload),
        )
        current = self._forkserver
        if current is not None and current.key == key and current.alive():
            return current
        if current is not None:
            current.close()  # it stays until the workers it started are gone
        if preload is None:
            preload = program_imports(
                exec_ if exec_.startswith("-m ") else os.path.join(settings["cwd"] or "", exec_)
            )
        path0 = (
            None
            if exec_.startswith("-m ")
            else os.path.dirname(os.path.abspath(os.path.join(settings["cwd"] or "", exec_)))
        )
        server = ForkServer(
            key, settings["exec_argv"], settings["cwd"], [*BASE_PRELOAD, *preload], path0
        )
        server.attach(self.loop, self.guard)
        self._forkserver = server
        return server

    def close_forkserver(self) -> None:
        """No more forks from the template (it exits once its workers are gone)."""
        if self._forkserver is not None:
            self._forkserver.close()
            self._forkserver = None

    # --- messages from workers -------------------------------------------------------------

    def dispatch(self, link: _Link, kind: int, payload: bytes, fds: list[int]) -> None:
        worker = link.worker
        if kind == _channel.INTERNAL:
            try:
                message = _checked_internal(_channel.decode_internal(payload))
            except ChannelError as exc:
                for fd in fds:
                    os.close(fd)
                self.channel_error(link, exc)
                return
            # Outside the try: an exception from a user's listener is not the worker's fault.
            self._internal(link, message, fds)
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
        worker.emit("message", message, handle)
        self.events.emit("message", worker, message, handle)

    def channel_error(self, link: _Link, exc: Exception, fatal: bool = False) -> None:
        """A bad frame from a worker: report it as the worker's 'error'; the primary carries on."""
        worker = link.worker
        if worker.listener_count("error"):
            worker.emit("error", exc)
        else:
            print(f"clusterlab: worker {worker.id}: {exc}", file=sys.stderr)
        if fatal:  # the stream can't be trusted any more: drop the channel (and what it held)
            link.reader.close()
            link._on_disconnect()

    def _internal(self, link: _Link, message: dict[str, Any], fds: list[int]) -> None:
        act = message["act"]
        worker = link.worker
        if act == "online":
            worker.state = "online"
            worker.emit("online")
            self.events.emit("online", worker)
        elif act == "queryServer":
            self._query_server(link, message)
        elif act == "listening":
            address = Address(
                message.get("address"), message["port"], message["address_type"], message.get("fd")
            )
            worker.state = "listening"
            worker.emit("listening", address)
            self.events.emit("listening", worker, address)
        elif act == "close":
            self.handles.leave(link, str(message["key"]))
        elif act == "exitedAfterDisconnect":
            worker.exited_after_disconnect = True
            link.write(_channel.internal_frame({"act": "ack", "seq": message.get("seq")}), [], None)
        for fd in fds:
            os.close(fd)

    def _query_server(self, link: _Link, message: dict[str, Any]) -> None:
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

    def pause_handles(self, link: _Link) -> None:
        """A worker was told to disconnect: its shared handles are released now; a hand-off
        handle leaves it the connections already handed (its servers serve them as they close)."""
        self.handles.pause(link)

    def remove_handles(self, link: _Link) -> None:
        self.handles.remove(link)

    # --- disconnect and exit ---------------------------------------------------------------

    def _remove(self, link: _Link) -> None:
        self.workers.pop(link.worker.id, None)
        self._links.pop(link.worker.id, None)

    def on_disconnect(self, link: _Link) -> None:
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

    def on_exit(self, link: _Link, code: int | None, sig: str | None) -> None:
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


_ADDRESS_TYPES = (4, 6, -1, "udp4", "udp6")


def _checked_internal(message: dict[str, Any]) -> dict[str, Any]:
    """The internal message with every field its act needs, of the right type; else ChannelError.

    Checked before anything acts on it, so a malformed frame is the sending worker's 'error' and
    never an exception in the primary.
    """
    act = message["act"]

    def need(name: str, *types: type, optional: bool = False) -> Any:
        value = message.get(name)
        if value is None and optional:
            return None
        if not isinstance(value, types) or isinstance(value, bool):
            raise ChannelError(f"invalid internal message {act!r}: field {name!r} is {value!r}")
        return value

    if act in ("online", "exitedAfterDisconnect"):
        return message
    if act == "queryServer":
        need("index", int)
        try:
            return {**message, "endpoint": Endpoint.from_message(message)}
        except ValueError as exc:
            raise ChannelError(str(exc)) from None
    if act == "listening":
        need("port", int)
        need("address", str, optional=True)
        need("fd", int, optional=True)
        if message.get("address_type") not in _ADDRESS_TYPES:
            raise ChannelError(
                f"invalid internal message 'listening': address_type {message.get('address_type')!r}"
            )
        return message
    if act == "close":
        need("key", str)
        return message
    raise ChannelError(f"unknown internal message {act!r}")


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


def _worker_stdio(settings: dict[str, Any]) -> tuple[Any, Any, Any]:
    """A worker's stdin, stdout and stderr: settings' stdio, pipes when silent, else ours."""
    stdio = settings["stdio"]
    if stdio is not None:
        stdin, stdout, stderr = stdio
    elif settings["silent"]:
        stdin, stdout, stderr = subprocess.PIPE, subprocess.PIPE, subprocess.PIPE
    else:
        stdin = stdout = stderr = None
    return stdin, stdout, stderr


def _exec_worker(
    settings: dict[str, Any], child_env: dict[str, str], fd: int, stdio: tuple[Any, Any, Any]
) -> subprocess.Popen[bytes]:
    """A fresh interpreter that boots the worker (the `exec` start method), in its own
    process group, as settings' uid and gid."""
    stdin, stdout, stderr = stdio
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    boot = (
        f"import sys;sys.path.insert(0,{package_root!r});"
        "from clusterlab.cluster._boot import main;main()"
    )
    cmd = [
        sys.executable,
        *settings["exec_argv"],
        "-c",
        boot,
        settings["exec"],
        *settings["args"],
    ]
    return subprocess.Popen(
        cmd,
        env=child_env,
        cwd=settings["cwd"],
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        pass_fds=(fd,),
        user=settings["uid"],
        group=settings["gid"],
        # As libuv does: a worker switched to another user keeps none of our groups.
        extra_groups=[]
        if (settings["uid"] is not None or settings["gid"] is not None) and os.geteuid() == 0
        else None,
        process_group=0,
    )
