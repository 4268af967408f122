"""The worker's side: its channel to the primary, `cluster.listen`, and graceful disconnect.

A daemon thread reads the channel and runs `cluster.worker` listeners one at a time, so
messages arrive and an orphaned worker exits even while the main thread is busy serving.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import select
import selectors
import socket
import sys
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from . import _channel
from ._channel import ChannelError, FrameReader
from ._endpoint import Endpoint, bind, resolve
from ._load import HandedSocket, LoadCounters
from ._worker import CurrentProcess, Worker

_EARLY_LIMIT = 100_000


def _exit_now(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass
    os._exit(code)


class ListenerClosedError(ConnectionAbortedError):
    """accept() on a cluster listener that was closed (by a disconnect, or by the primary)."""


class ClusterSocket(socket.socket):
    """A listening socket obtained through the cluster; closing it tells the primary.

    A blocking `accept()` waits on the socket and on a private wake-up pipe, so closing the
    listener (a graceful disconnect) releases a thread blocked in it with ListenerClosedError.
    A shared socket's descriptor is non-blocking underneath (its flags are shared with every
    worker, as libuv's are); another worker winning the race just means waiting again.
    """

    _cluster_runtime: ChildRuntime | None = None
    _cluster_key: str | None = None
    _cluster_index: tuple[str, int] | None = None
    _cluster_address: Any = None
    _cluster_wake: tuple[int, int] | None = None

    def _cluster_prepare(self) -> None:
        self._cluster_wake = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.type == socket.SOCK_STREAM:
            os.set_blocking(self.fileno(), False)

    def _cluster_wait(self) -> bool:
        """In blocking mode, wait until readable; ListenerClosedError if closed meanwhile.

        False (without waiting) in non-blocking or timeout mode: the caller acts as usual.
        """
        wake = self._cluster_wake
        if wake is None or self.gettimeout() is not None:
            return False
        poller = select.poll()
        poller.register(self.fileno(), select.POLLIN)
        poller.register(wake[0], select.POLLIN)
        events = dict(poller.poll())
        if wake[0] in events or self._cluster_wake is None:
            raise ListenerClosedError("this cluster listener was closed")
        return True

    def accept(self) -> tuple[socket.socket, Any]:
        while True:
            waited = self._cluster_wait()
            try:
                return self.accept_nowait()
            except (BlockingIOError, InterruptedError):
                if not waited:
                    raise  # non-blocking mode: the caller's loop waits
                # another worker took it: wait again

    def accept_nowait(self) -> tuple[socket.socket, Any]:
        """One accept attempt; BlockingIOError when nothing is waiting (or another took it).

        For callers that already know the socket is readable (`socketserver` after select).
        """
        return super().accept()

    def _real_close(self, _ss: Any = socket.socket) -> None:
        runtime, self._cluster_runtime = self._cluster_runtime, None
        wake, self._cluster_wake = self._cluster_wake, None
        if wake is not None:
            os.write(wake[1], b"\0")
        try:
            super()._real_close()  # type: ignore[misc]
        finally:
            if wake is not None:
                os.close(wake[0])
                os.close(wake[1])
            if runtime is not None:
                runtime.listener_closed(self)


class RoundRobinSocket(ClusterSocket):
    """SCHED_RR in a worker: connections handed over by the primary, one per accept().

    The descriptor is the worker's end of a private hand-off pair, so `selectors`,
    `socketserver` and the default asyncio loop see it become readable when a connection waits.
    """

    _conn_family: int = socket.AF_INET
    _cluster_load: LoadCounters | None = None  # shared with the primary's scheduler

    def accept_nowait(self) -> tuple[socket.socket, Any]:
        fd = self._take()
        self._ack(1)
        conn = self._adopt(fd)
        if socket.getdefaulttimeout() is None and self.gettimeout():
            conn.setblocking(True)
        try:
            address = conn.getpeername()
        except OSError:
            address = ("", 0) if self._conn_family != socket.AF_UNIX else ""
        return conn, address

    def take_many(self, limit: int = 64) -> list[socket.socket]:
        """Take every handed-over connection now waiting (up to `limit`), with one ack.

        For servers on an event loop: no peer-address lookup, one reply to the primary.
        """
        conns: list[socket.socket] = []
        try:
            while len(conns) < limit:
                conns.append(self._adopt(self._take()))
        except (BlockingIOError, InterruptedError):
            pass
        finally:
            if conns:
                self._ack(len(conns))
        return conns

    def _adopt(self, fd: int) -> socket.socket:
        """A handed-over connection; its close is counted when a scheduler reads the counts."""
        load = self._cluster_load
        if load is None:
            return socket.socket(self._conn_family, socket.SOCK_STREAM, 0, fileno=fd)
        conn = HandedSocket(self._conn_family, socket.SOCK_STREAM, 0, fileno=fd)
        conn._cluster_load = load
        return conn

    def _take(self) -> int:
        """One handed-over descriptor; BlockingIOError when none is waiting."""
        while True:
            data, fds, _, _ = socket.recv_fds(self, 1, 4, socket.MSG_CMSG_CLOEXEC)
            if not data:
                raise ListenerClosedError("this cluster listener was closed")
            if fds:
                for extra in fds[1:]:
                    os.close(extra)
                return fds[0]

    def _ack(self, taken: int) -> None:
        """Tell the primary how many were taken, so it may hand over that many more."""
        try:
            self.send(b"\x01" * taken, socket.MSG_DONTWAIT)
        except OSError:
            pass

    def listen(self, backlog: int = 0, /) -> None:
        """The primary listens; accepted for compatibility (the backlog went with the request)."""

    def getsockname(self) -> Any:
        return self._cluster_address

    def dup(self) -> RoundRobinSocket:
        raise OSError("a round-robin cluster listener cannot be duplicated")


class _Indexes:
    """Node's per-endpoint listen counters: the Nth listen on a key gets index N-1."""

    def __init__(self) -> None:
        self._keys: dict[str, tuple[list[int], set[int]]] = {}

    def acquire(self, key: str) -> int:
        counter, used = self._keys.setdefault(key, ([0], set()))
        index = counter[0]
        counter[0] += 1
        used.add(index)
        return index

    def release(self, key: str, index: int) -> None:
        entry = self._keys.get(key)
        if entry is None:
            return
        entry[1].discard(index)
        if not entry[1]:
            del self._keys[key]


class ChildRuntime:
    """The worker process's end of the cluster."""

    def __init__(
        self, worker_id: int, fd: int, serialization: str, inspect_port: int | None
    ) -> None:
        self.serialization = serialization
        self.sock = socket.socket(fileno=fd)
        self.sock.set_inheritable(False)
        self.sock.setblocking(True)
        self.worker = Worker(id=worker_id, process=CurrentProcess(), state="online")
        self.worker.inspect_port = inspect_port  # type: ignore[attr-defined]
        self.worker._link = self
        self.connected = True
        self.disconnected = threading.Event()
        self._reader = FrameReader()
        self._write_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._seq = 0
        self._requests: dict[int, Future[tuple[dict[str, Any], list[int]]]] = {}
        self._posted: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]]] = (
            queue.SimpleQueue()
        )
        self._post_lock = threading.Lock()
        self._posting_closed = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._indexes = _Indexes()
        self._listeners: list[ClusterSocket] = []
        self._servers: list[Callable[[], None]] = []
        self._disconnecting = False
        self._deferred: list[tuple[int, bytes, list[int]]] | None = None
        # Messages that came before the program added a 'message' listener (it may be still
        # starting up: the primary can answer 'online' before the worker's code has run).
        self._early: list[tuple[Any, Any]] | None = []
        # The 'disconnect' listeners called when the channel closed (None until then): one
        # added later is called at once (see _on_listener_added).
        self._disconnect_lock = threading.Lock()
        self._disconnect_called: list[Callable[[], Any]] | None = None
        self.worker._listener_added = self._on_listener_added  # type: ignore[method-assign]
        self._thread = threading.Thread(target=self._run, name="clusterlab-channel", daemon=True)

    def start(self) -> None:
        try:
            self._write(_channel.internal_frame({"act": "online"}), [])
        except OSError:
            pass  # the primary is already gone: the channel thread sees it and exits
        self._thread.start()

    # --- Worker methods (worker side) ------------------------------------------------------

    def send(
        self, message: Any, handle: Any, callback: Callable[[BaseException | None], Any] | None
    ) -> bool:
        kind, payload = _channel.encode_user(message, self.serialization)
        fds = [_channel.handle_fd(handle)] if handle is not None else []
        data = _channel.frame(kind, payload, len(fds))
        if not self.connected:
            if callback is not None:
                self.post(callback, ConnectionError("the channel to the primary is closed"))
            return False
        try:
            self._write(data, fds)
        except OSError as exc:
            if callback is not None:
                self.post(callback, exc)
            return False
        if callback is not None:
            self.post(callback, None)
        return True

    def kill(self, signal: str | int = "SIGTERM") -> None:
        """Inside a worker the signal is ignored (as Node): disconnect gracefully, then exit 0."""
        if not self.connected:
            _exit_now(0)
        self._start_disconnect(from_primary=False, then_exit=True)

    def disconnect(self) -> None:
        self._start_disconnect(from_primary=False, then_exit=False)

    def is_connected(self) -> bool:
        return self.connected

    def is_dead(self) -> bool:
        return False

    # --- servers ---------------------------------------------------------------------------

    def register_server(self, close_gracefully: Callable[[], None]) -> Callable[[], None]:
        """Have disconnect call `close_gracefully()` (which may block until in-flight work ends).

        Returns a function that unregisters it.
        """
        self._servers.append(close_gracefully)

        def unregister() -> None:
            if close_gracefully in self._servers:
                self._servers.remove(close_gracefully)

        return unregister

    def listen(self, endpoint: Endpoint, exclusive: bool) -> socket.socket:
        if exclusive:
            sock = bind(endpoint)
            self._report_listening(endpoint, sock.getsockname())
            return sock
        if self._disconnecting or not self.connected:
            # As Node, a disconnecting worker gets no new servers; its program ends normally.
            raise ListenerClosedError("this worker is disconnecting: no new cluster listeners")
        base = endpoint.base_key
        index = self._indexes.acquire(base)
        try:
            reply, fds = self.request(
                {"act": "queryServer", "index": index, **endpoint.to_message()}
            )
        except (OSError, ConnectionError) as exc:
            self._indexes.release(base, index)
            if self._disconnecting or not self.connected:
                raise ListenerClosedError(
                    "this worker is disconnecting: no new cluster listeners"
                ) from exc
            raise
        except BaseException:
            self._indexes.release(base, index)
            raise
        if reply.get("errno"):
            for fd in fds:
                os.close(fd)
            self._indexes.release(base, index)
            code = int(reply["errno"])
            raise OSError(code, f"{os.strerror(code)}: cannot listen on {endpoint.describe()}")
        sock = self._make_socket(endpoint, reply, fds)
        sock._cluster_key = str(reply["key"])
        sock._cluster_index = (base, index)
        sock._cluster_runtime = self
        self._listeners.append(sock)
        self._report_listening(endpoint, sock.getsockname())
        return sock

    def _make_socket(
        self, endpoint: Endpoint, reply: dict[str, Any], fds: list[int]
    ) -> ClusterSocket:
        mode = reply.get("mode")
        kind = socket.SOCK_DGRAM if endpoint.udp else socket.SOCK_STREAM
        if mode == "rr":
            sock: ClusterSocket = RoundRobinSocket(
                endpoint.family, socket.SOCK_STREAM, 0, fileno=fds[0]
            )
            sock._conn_family = endpoint.family  # type: ignore[attr-defined]
            if len(fds) > 1:  # the worker's load counters, shared with the primary
                sock._cluster_load = LoadCounters(fds[1])  # type: ignore[attr-defined]
                os.close(fds[1])
            sock._cluster_prepare()
            if endpoint.path is not None:
                sock._cluster_address = endpoint.path
            elif endpoint.family == socket.AF_INET6:
                sock._cluster_address = (endpoint.bind_host, int(reply["port"]), 0, 0)
            else:
                sock._cluster_address = (endpoint.bind_host, int(reply["port"]))
            return sock
        if mode == "shared":
            sock = ClusterSocket(endpoint.family, kind, 0, fileno=fds[0])
            if not endpoint.udp:
                sock.listen(endpoint.backlog)
                sock._cluster_prepare()
            return sock
        if mode == "reuseport":
            own = bind(dataclasses.replace(endpoint, port=int(reply["port"])), reuseport=True)
            sock = ClusterSocket(endpoint.family, kind, 0, fileno=own.detach())
            if not endpoint.udp:
                sock._cluster_prepare()
            return sock
        raise ChannelError(f"unknown listen mode {mode!r} from the primary")

    def _report_listening(self, endpoint: Endpoint, sockname: Any) -> None:
        port = int(sockname[1]) if isinstance(sockname, tuple) else -1
        address = endpoint.report(port)
        self._write(
            _channel.internal_frame(
                {
                    "act": "listening",
                    "address": address.address,
                    "port": address.port,
                    "address_type": address.address_type,
                    "fd": None,
                }
            ),
            [],
        )

    def listener_closed(self, sock: ClusterSocket) -> None:
        if sock in self._listeners:
            self._listeners.remove(sock)
        if sock._cluster_index is not None:
            self._indexes.release(*sock._cluster_index)
        if self.connected and sock._cluster_key is not None:
            try:
                self._write(_channel.internal_frame({"act": "close", "key": sock._cluster_key}), [])
            except OSError:
                pass

    # --- disconnect ------------------------------------------------------------------------

    def _start_disconnect(self, from_primary: bool, then_exit: bool) -> None:
        with self._state_lock:
            if self._disconnecting or not self.connected:
                return
            self._disconnecting = True
        self.worker.exited_after_disconnect = True
        self.worker.state = "disconnecting" if not then_exit else "destroying"
        threading.Thread(
            target=self._disconnect,
            args=(from_primary, then_exit),
            name="clusterlab-disconnect",
            daemon=True,
        ).start()

    def _disconnect(self, from_primary: bool, then_exit: bool) -> None:
        try:
            for close in list(self._servers):
                try:
                    close()
                except Exception:  # noqa: BLE001 - one server's failure must not stop the rest
                    traceback.print_exc()
            self._servers.clear()
            for sock in list(self._listeners):
                sock.close()
            if not from_primary and self.connected:
                try:
                    self.request({"act": "exitedAfterDisconnect"})
                except (OSError, ChannelError):
                    pass
        finally:
            self._close_channel()
            if then_exit:
                self.disconnected.wait(5)
                _exit_now(0)

    def _close_channel(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # --- the channel -----------------------------------------------------------------------

    def _write(self, data: bytes, fds: list[int]) -> None:
        if not self.connected:
            raise _channel.ChannelClosedError("the channel to the primary is closed")
        with self._write_lock:
            if fds:
                sent = socket.send_fds(self.sock, [data], fds)
                if sent < len(data):
                    self.sock.sendall(data[sent:])
            else:
                self.sock.sendall(data)

    def request(self, message: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        """Send an internal request and wait for the primary's answer."""
        future: Future[tuple[dict[str, Any], list[int]]] = Future()
        with self._state_lock:
            self._seq += 1
            seq = self._seq
            self._requests[seq] = future
        self._write(_channel.internal_frame({**message, "seq": seq}), [])
        if threading.current_thread() is self._thread:
            self._pump_until(future)  # called from a listener: read inline, or we would deadlock
        return future.result()

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn(*args)` on the channel thread (on a thread of its own once that has ended)."""
        with self._post_lock:
            if not self._posting_closed:
                self._posted.put((fn, args))
                try:
                    self._wake_w.send(b"\0")
                except OSError:
                    pass
                return
        threading.Thread(target=self._run_one, args=(fn, args), daemon=True).start()

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self.sock, selectors.EVENT_READ, "channel")
        selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while self.connected:
                for key, _ in selector.select():
                    if key.data == "wake":
                        self._run_posted()
                    elif not self._read_once():
                        break
            with self._post_lock:  # from now on, post() runs callbacks on threads of their own
                self._posting_closed = True
            self._run_posted()
        except BaseException:  # noqa: BLE001 - a listener's exception ends the worker, as Node
            traceback.print_exc()
            _exit_now(1)
        finally:
            selector.close()

    def _run_one(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            fn(*args)
        except BaseException:  # noqa: BLE001 - a listener's exception ends the worker, as Node
            traceback.print_exc()
            _exit_now(1)

    def _run_posted(self) -> None:
        try:
            self._wake_r.recv(4096)
        except OSError:
            pass
        while True:
            try:
                fn, args = self._posted.get_nowait()
            except queue.Empty:
                return
            fn(*args)

    def _pump_until(self, future: Future[Any]) -> None:
        self._deferred = []
        try:
            while not future.done() and self.connected:
                self._read_once()
        finally:
            deferred, self._deferred = self._deferred, None
        for frame in deferred:
            self._dispatch(*frame)

    def _read_once(self) -> bool:
        try:
            data, fds = _channel.recv_some(self.sock)
        except ChannelError as exc:
            print(f"clusterlab: worker channel: {exc}", file=sys.stderr)
            data, fds = b"", []
        except OSError:
            data, fds = b"", []
        if not data:
            self._on_channel_closed()
            return False
        self._reader.feed(data, fds)
        try:
            for frame in self._reader.frames():
                self._dispatch(*frame)
        except ChannelError as exc:
            print(f"clusterlab: worker channel: {exc}", file=sys.stderr)
            self._close_channel()
        return True

    def _dispatch(self, kind: int, payload: bytes, fds: list[int]) -> None:
        if kind == _channel.INTERNAL:
            message = _channel.decode_internal(payload)
            act = message["act"]
            if act == "ack":
                future = self._requests.pop(int(message.get("seq") or 0), None)
                if future is not None:
                    future.set_result((message, fds))
                    return
            elif act == "disconnect":
                self._start_disconnect(from_primary=True, then_exit=False)
            for fd in fds:
                os.close(fd)
            return
        if self._deferred is not None:
            self._deferred.append((kind, payload, fds))
            return
        try:
            message = _channel.decode_user(kind, payload, self.serialization)
        except ChannelError as exc:
            for fd in fds:
                os.close(fd)
            print(f"clusterlab: worker channel: {exc}", file=sys.stderr)
            return
        handle = _channel.socket_from_fd(fds[0]) if fds else None
        for extra in fds[1:]:
            os.close(extra)
        if self._early is not None and (self._early or not self.worker.listener_count("message")):
            if len(self._early) < _EARLY_LIMIT:
                self._early.append((message, handle))
            return
        self.worker.emit("message", message, handle)

    def _on_listener_added(self, event: str, entry: Callable[..., Any]) -> None:
        if event == "message" and self._early:
            self.post(self._deliver_early)
        elif event == "disconnect":
            self._late_disconnect_listener(entry)

    def _late_disconnect_listener(self, entry: Callable[[], Any]) -> None:
        """A 'disconnect' listener added after the worker disconnected is called, once.

        In Node a worker's top-level code runs before any message from the primary is handled,
        so its listener is in place when the disconnect lands; here the program runs on its own
        thread and may add it after the channel thread has emitted the event. It runs on a
        thread of its own, which the worker waits for before exiting.
        """
        with self._disconnect_lock:
            called = self._disconnect_called
            if called is None or any(entry is done for done in called):
                return
        threading.Thread(
            target=self._run_one, args=(entry, ()), name="clusterlab-disconnect-listener"
        ).start()

    def _emit_disconnect(self) -> None:
        """Emit 'disconnect' to the listeners there now; later ones are called as they come."""
        with self._disconnect_lock:
            called = self._disconnect_called = self.worker._entries("disconnect")
        for listener in called:
            listener()

    def _deliver_early(self) -> None:
        early, self._early = self._early or [], []
        for message, handle in early:
            self.worker.emit("message", message, handle)

    def program_returned(self) -> None:
        """The worker's program returned: from now on a message nobody listens for is dropped."""
        self.post(self._stop_holding)

    def _stop_holding(self) -> None:
        self._early = None

    def _on_channel_closed(self) -> None:
        if not self.connected:
            return
        self.connected = False
        for future in self._requests.values():
            future.set_exception(ConnectionError("the channel to the primary closed"))
        self._requests.clear()
        self._reader.close()
        # The socket is shut down but never closed: another thread may still be writing, and
        # a closed descriptor number could be reused by an unrelated file.
        self._close_channel()
        self.worker.state = "disconnected"
        try:
            self._emit_disconnect()
        finally:
            self.disconnected.set()
            if not self.worker.exited_after_disconnect:
                _exit_now(0)  # the primary is gone (or cut us off): never outlive it


_runtime: ChildRuntime | None = None


def runtime() -> ChildRuntime | None:
    return _runtime


def start_from_env() -> ChildRuntime | None:
    """Become a worker if this process was started by `cluster.fork()`; idempotent."""
    global _runtime
    if _runtime is not None:
        return _runtime
    worker_id = os.environ.pop("CLUSTERLAB_WORKER_ID", None)
    fd = os.environ.pop("CLUSTERLAB_CHANNEL_FD", None)
    serialization = os.environ.pop("CLUSTERLAB_SERIALIZATION", "json")
    inspect_port = os.environ.pop("CLUSTERLAB_INSPECT_PORT", "")
    inspect = os.environ.pop("CLUSTERLAB_INSPECT", "")
    if worker_id is None or fd is None:
        return None
    port = int(inspect_port) if inspect_port else None
    _runtime = ChildRuntime(int(worker_id), int(fd), serialization, port)
    _runtime.start()
    if inspect and port is not None:
        _start_debugger(port)
    return _runtime


def _start_debugger(port: int) -> None:
    """Listen for a debugger on the worker's inspect port when debugpy is installed."""
    try:
        import debugpy
    except ImportError:
        return
    try:
        debugpy.listen(("127.0.0.1", port))
    except Exception as exc:  # noqa: BLE001 - a debugger problem must not stop the worker
        print(f"clusterlab: worker debugger on port {port}: {exc}", file=sys.stderr)


def resolve_listen(**kwargs: Any) -> Endpoint:
    return resolve(**kwargs)
