"""A worker's cluster listeners: the sockets `cluster.listen` returns. Closing one tells the
primary; a graceful disconnect closes them, releasing a thread blocked in `accept()`. A worker
that already disconnected gets a listener that is closed from the start (`closed_listener`)."""

from __future__ import annotations

import os
import select
import socket
from typing import TYPE_CHECKING, Any

from ._load import HandedSocket, LoadCounters

if TYPE_CHECKING:
    from ._child import ChildRuntime


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
        if self.fileno() < 0:  # closed (by a disconnect, or never opened): as while waiting
            raise ListenerClosedError("this cluster listener was closed")
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


def closed_listener(family: int, kind: int) -> ClusterSocket:
    """What `cluster.listen` gives a worker that is disconnecting or disconnected: a listener
    closed from the start, no error.

    Node's `server.listen()` in such a worker asks the primary over a channel that is gone, so
    the server never listens: no error, no 'listening', and the worker ends with its program.
    Here the listener is closed: `fileno()` is -1, `accept()` raises ListenerClosedError (as
    after a disconnect while accepting, which ends the program normally), and the servers in
    `clusterlab.servers` return from serving at once. The primary is told nothing.
    """
    sock = ClusterSocket(family, kind)
    sock.close()
    return sock


def is_closed_listener(sock: socket.socket) -> bool:
    """True for a cluster listener that is closed (from the start, or by a disconnect)."""
    return isinstance(sock, ClusterSocket) and sock.fileno() < 0


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
