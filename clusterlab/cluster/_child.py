"""The worker's side: its channel to the primary, `cluster.listen`, and graceful disconnect.

A daemon thread reads the channel and runs `cluster.worker` listeners one at a time, so
messages arrive and an orphaned worker exits even while the main thread is busy serving.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import selectors
import socket
import sys
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from . import _acts, _channel
from ._channel import ChannelError, FrameReader, read_frames
from ._endpoint import Endpoint, bind, resolve
from ._listeners import ClusterSocket, RoundRobinSocket, closed_listener
from ._listeners import ListenerClosedError as ListenerClosedError  # _boot's, the servers'
from ._load import LoadCounters
from ._worker import CurrentProcess, Worker

_EARLY_LIMIT = 100_000


def _exit_now(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass
    os._exit(code)


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
        kind = socket.SOCK_DGRAM if endpoint.udp else socket.SOCK_STREAM
        if self._disconnecting or not self.connected:
            # As Node: a disconnecting worker's server never listens (no error, no
            # 'listening'); its program ends normally.
            return closed_listener(endpoint.family, kind)
        base = endpoint.base_key
        index = self._indexes.acquire(base)
        try:
            reply, fds = self.request(
                {"act": "queryServer", "index": index, **endpoint.to_message()}
            )
        except (OSError, ConnectionError):
            self._indexes.release(base, index)
            if self._disconnecting or not self.connected:
                return closed_listener(endpoint.family, kind)
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
        """Read and dispatch what is there (blocking); False once the channel has ended."""
        try:
            frames = read_frames(self.sock, self._reader)
            if frames is None:
                self._on_channel_closed()
                return False
            for frame in frames:
                self._dispatch(*frame)
        except ChannelError as exc:  # a broken stream: end the channel (next read sees it)
            print(f"clusterlab: worker channel: {exc}", file=sys.stderr)
            self._close_channel()
        return True

    def _dispatch(self, kind: int, payload: bytes, fds: list[int]) -> None:
        if kind == _channel.INTERNAL:
            message = _channel.decode_internal(payload)
            act = _ACTS.get(message["act"])  # one this worker does not know: ignored
            if act is None or not act[1](self, act[0](message), fds):
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

    def _on_ack(self, message: dict[str, Any], fds: list[int]) -> bool:
        """The primary's answer to a request: it goes, with its descriptors, to the waiter."""
        future = self._requests.pop(message.get("seq") or 0, None)
        if future is None:
            return False
        future.set_result((message, fds))
        return True

    def _on_disconnect_asked(self, message: dict[str, Any], fds: list[int]) -> bool:
        self._start_disconnect(from_primary=True, then_exit=False)
        return False

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


#: Every act the primary may send: its check (`_acts`) and the handler, which returns True when
#: it took the frame's descriptors.
_ACTS: dict[
    str,
    tuple[
        Callable[[dict[str, Any]], dict[str, Any]],
        Callable[[ChildRuntime, dict[str, Any], list[int]], bool],
    ],
] = {
    "ack": (_acts.ack, ChildRuntime._on_ack),
    "disconnect": (_acts.no_fields, ChildRuntime._on_disconnect_asked),
}

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
