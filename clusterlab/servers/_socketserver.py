"""`socketserver`/`http.server` classes whose listening socket is shared through the cluster.

On disconnect the server stops accepting, lets in-flight requests finish (threads are joined),
and `serve_forever()` returns, so the worker's main code ends and the worker exits 0. A server
built in a worker that already disconnected (or while it disconnects) is closed from the start,
as Node's `server.listen()` there never listens: `serve_forever()` returns at once.
"""

from __future__ import annotations

import http.server
import socket
import socketserver
import threading
from typing import Any

from .. import cluster
from ..cluster._listeners import is_closed_listener
from ..cluster._load import LoadCounters, counters_of


class _ClusterServerMixin:
    """Binds through `cluster.listen` instead of binding its own socket."""

    socket: socket.socket
    server_address: Any
    request_queue_size: int
    address_family: int

    def __init__(
        self, server_address: Any, RequestHandlerClass: Any, bind_and_activate: bool = True
    ) -> None:
        socketserver.BaseServer.__init__(self, server_address, RequestHandlerClass)  # type: ignore[type-var]
        self._serving = threading.Event()
        self._state_lock = threading.Lock()
        self._closed = False
        self._closing = False  # a disconnect began: serve_forever() must not start any more
        self._unregister = lambda: None
        self._load: LoadCounters | None = None
        if bind_and_activate:
            try:
                self.server_bind()
                self.server_activate()
            except BaseException:
                self.server_close()
                raise

    def server_bind(self) -> None:
        host, port = _split_address(self.server_address)
        # Registered before listening, so a disconnect that lands while the server is being
        # built still finds it (and the server then knows it is closed).
        self._unregister = cluster._register_server(self._close_gracefully)
        sock = cluster.listen(port=port, host=host or None, backlog=self.request_queue_size)
        with self._state_lock:
            self.socket = sock
            closed = self._closed or is_closed_listener(sock)
            self._closing = self._closing or closed
        if not closed:
            try:
                self.address_family = sock.family
                self.server_address = sock.getsockname()
            except OSError:  # closed by a disconnect that landed just now
                closed = self._closing = True
        if closed:
            # The worker disconnected before or while this server was built: a server that
            # never serves, as Node's; serve_forever() returns at once.
            sock.close()
            return
        self._load = counters_of(sock)
        if self._load is not None:
            self._load.count_requests()

    def server_activate(self) -> None:
        """The socket is already listening (in the worker or in the primary)."""

    def get_request(self) -> tuple[Any, Any]:
        # serve_forever calls this after select() said readable; on a shared socket another
        # worker may have won the race, and waiting here would stall shutdown(): don't wait.
        accept = getattr(self.socket, "accept_nowait", self.socket.accept)
        conn, address = accept()
        if conn.family in (socket.AF_INET, socket.AF_INET6):
            # Handlers write headers and body separately; without this, a keep-alive client
            # waits on Nagle's algorithm and delayed ACKs (~40 ms a response). Node does the same.
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, address

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Handle one request, counted in flight for the primary's scheduler (in shared
        memory: no message). socketserver's request is a connection: for `http.server`, a
        request unless the handler keeps connections alive (HTTP/1.1)."""
        load = self._load
        if load is None:
            super().finish_request(request, client_address)  # type: ignore[misc]
            return
        load.request_started()
        try:
            super().finish_request(request, client_address)  # type: ignore[misc]
        finally:
            load.request_finished()

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        with self._state_lock:
            if self._closed or self._closing:
                return  # closed by a disconnect before it started serving: nothing to serve
            self._serving.set()
        try:
            super().serve_forever(poll_interval)  # type: ignore[misc]
        finally:
            self._serving.clear()

    def server_close(self) -> None:
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
        self._unregister()
        if hasattr(self, "socket"):
            super().server_close()  # type: ignore[misc]

    def _close_gracefully(self) -> None:
        """Disconnect: stop serving, close the listener, wait for in-flight requests."""
        with self._state_lock:
            # Decided under the lock: serve_forever() either runs already (and is shut down)
            # or will see `_closing` and return; it never starts on a listener being closed.
            serving = self._serving.is_set()
            self._closing = True
        if serving:
            self.shutdown()  # type: ignore[attr-defined]
        self._serve_handed_over()
        self.server_close()

    def _serve_handed_over(self) -> None:
        """SCHED_RR: serve the connections the primary handed over before the disconnect.

        The primary hands nothing more to a disconnecting worker; what it already handed is
        this worker's to serve (when every worker is leaving, nobody else could).
        """
        if self._closed or not hasattr(getattr(self, "socket", None), "accept_nowait"):
            return
        for _ in range(1024):  # the primary's window is far smaller; a bound, not a limit
            try:
                conn, address = self.get_request()
            except OSError:  # none left (BlockingIOError), or the pair is gone
                return
            if not self.verify_request(conn, address):  # type: ignore[attr-defined]
                self.shutdown_request(conn)  # type: ignore[attr-defined]
                continue
            try:
                self.process_request(conn, address)  # type: ignore[attr-defined]
            except Exception:
                self.handle_error(conn, address)  # type: ignore[attr-defined]
                self.shutdown_request(conn)  # type: ignore[attr-defined]


def _split_address(address: Any) -> tuple[str, int]:
    if not isinstance(address, tuple) or len(address) < 2:
        raise TypeError(f"server_address must be (host, port), got {address!r}")
    return str(address[0] or ""), int(address[1])


class TCPServer(_ClusterServerMixin, socketserver.TCPServer):
    """`socketserver.TCPServer` on a cluster-shared port."""


class ThreadingTCPServer(_ClusterServerMixin, socketserver.ThreadingTCPServer):
    """`socketserver.ThreadingTCPServer` on a cluster-shared port."""

    daemon_threads = False  # in-flight requests finish on disconnect
    block_on_close = True


class HTTPServer(_ClusterServerMixin, http.server.HTTPServer):
    """`http.server.HTTPServer` on a cluster-shared port."""

    def server_bind(self) -> None:
        _ClusterServerMixin.server_bind(self)
        host, port = self.server_address[:2]
        # Not socket.getfqdn(): a reverse lookup may wait on an unreachable resolver.
        self.server_name = host if host not in ("", "0.0.0.0", "::") else socket.gethostname()
        self.server_port = port


class ThreadingHTTPServer(socketserver.ThreadingMixIn, HTTPServer):
    """`http.server.ThreadingHTTPServer` on a cluster-shared port."""

    daemon_threads = False
    block_on_close = True
