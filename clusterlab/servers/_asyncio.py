"""asyncio servers on a cluster-shared port: `start_server` and `create_server`.

With the default loop the cluster's socket goes straight to `loop.create_server(sock=...)`.
A round-robin listener is not a kernel listening socket, so on other loops (uvloop) connections
are taken from it with `add_reader` and handed to `loop.connect_accepted_socket`.
On disconnect the server stops accepting and waits until its open connections have closed.
A server created in a worker that already disconnected is closed from the start (Node's
`server.listen()` there never listens): `serve_forever()` returns at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from .. import cluster
from ..cluster._child import RoundRobinSocket
from ..cluster._listeners import is_closed_listener


class _Tracker:
    """Counts a server's open connections, so a graceful close can wait for them."""

    def __init__(self) -> None:
        self.active = 0
        self._idle: asyncio.Event | None = None

    def opened(self) -> None:
        self.active += 1

    def closed(self) -> None:
        self.active -= 1
        if self.active <= 0 and self._idle is not None:
            self._idle.set()

    async def wait_idle(self) -> None:
        if self.active <= 0:
            return
        self._idle = asyncio.Event()
        await self._idle.wait()

    def wrap_factory(
        self, factory: Callable[[], asyncio.BaseProtocol]
    ) -> Callable[[], asyncio.BaseProtocol]:
        def tracked() -> asyncio.BaseProtocol:
            protocol = factory()
            original = protocol.connection_lost
            tracker = self

            def connection_lost(exc: Exception | None) -> None:
                try:
                    original(exc)
                finally:
                    tracker.closed()

            try:
                protocol.connection_lost = connection_lost  # type: ignore[method-assign]
            except AttributeError:  # a protocol with __slots__: it can't be waited for
                return protocol
            tracker.opened()
            return protocol

        return tracked


class HandoffServer:
    """An `asyncio.Server` look-alike over a round-robin listener, for loops other than asyncio's."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        factory: Callable[[], asyncio.BaseProtocol],
        sock: RoundRobinSocket,
        kw: dict[str, Any],
    ) -> None:
        self._loop = loop
        self._factory = factory
        self._sock = sock
        self._kw = kw
        self._serving = False
        self._closed = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        sock.setblocking(False)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return () if self._sock.fileno() < 0 else (self._sock,)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        if not self._serving and self._sock.fileno() >= 0:
            self._loop.add_reader(self._sock.fileno(), self._on_ready)
            self._serving = True

    def _on_ready(self) -> None:
        try:
            self._adopt()
        except OSError:
            self.close()

    def _adopt(self) -> int:
        """Start serving every connection waiting on the hand-off socket; how many there were."""
        conns = self._sock.take_many()
        loop, factory, kw = self._loop, self._factory, self._kw
        for conn in conns:
            task = loop.create_task(loop.connect_accepted_socket(factory, conn, **kw))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return len(conns)

    def close(self) -> None:
        if self._serving:
            self._loop.remove_reader(self._sock.fileno())
            self._serving = False
            # What the primary handed over before the disconnect is ours to serve (it hands
            # nothing more to a disconnecting worker, and nobody else may be left to take it).
            with contextlib.suppress(OSError):
                while self._adopt():
                    pass
        self._sock.close()
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def serve_forever(self) -> None:
        await self.start_serving()
        await self._closed.wait()

    async def __aenter__(self) -> HandoffServer:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()
        await self.wait_closed()


class _NeverListened:
    """The inner server for a listener closed from the start (the worker had disconnected)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return ()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return False

    async def start_serving(self) -> None:
        """Nothing to serve."""

    def close(self) -> None:
        """Closed already."""


def _is_stdlib_loop(loop: asyncio.AbstractEventLoop) -> bool:
    return isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop)


async def _listen(host: str | None, port: int, backlog: int, **listen_kw: Any) -> socket.socket:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        None, lambda: cluster.listen(port=port, host=host or None, backlog=backlog, **listen_kw)
    )


class ClusterServer:
    """What `create_server`/`start_server` return: an `asyncio.Server` with graceful closing.

    `close()` stops accepting; `wait_closed()` then waits until every connection has closed
    (Python 3.12's meaning, on 3.11 too); `serve_forever()` returns once the server is closed
    and drained (asyncio's raises CancelledError), so a worker's program ends normally after a
    graceful disconnect. Anything else is the underlying server's.
    """

    def __init__(self, server: Any, tracker: _Tracker) -> None:
        self._server = server
        self._tracker = tracker
        self._closed = asyncio.Event()
        self._drained = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)

    @property
    def sockets(self) -> Any:
        return self._server.sockets

    def is_serving(self) -> bool:
        return bool(self._server.is_serving())

    async def start_serving(self) -> None:
        await self._server.start_serving()

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._server.close()
        asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        await self._tracker.wait_idle()
        self._drained.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()
        await self._drained.wait()

    async def serve_forever(self) -> None:
        await self.start_serving()
        await self.wait_closed()

    async def __aenter__(self) -> ClusterServer:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()
        await self.wait_closed()


async def create_server(
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    host: str | None = None,
    port: int = 0,
    *,
    backlog: int = 511,
    start_serving: bool = True,
    path: str | None = None,
    **kw: Any,
) -> ClusterServer:
    """`loop.create_server` on a cluster-shared port (or Unix `path`)."""
    loop = asyncio.get_running_loop()
    sock = await _listen(host, port, backlog, **({"path": path} if path else {}))
    tracker = _Tracker()
    factory = tracker.wrap_factory(protocol_factory)
    inner: Any
    if is_closed_listener(sock):
        server = ClusterServer(_NeverListened(loop), tracker)
        server.close()
        return server
    try:
        if isinstance(sock, RoundRobinSocket) and not _is_stdlib_loop(loop):
            inner = HandoffServer(loop, factory, sock, kw)
            if start_serving:
                await inner.start_serving()
        else:
            inner = await loop.create_server(
                factory, sock=sock, backlog=backlog, start_serving=start_serving, **kw
            )
    except BaseException:
        sock.close()
        raise
    server = ClusterServer(inner, tracker)
    server._unregister = cluster._register_server(lambda: _close_from_thread(loop, server))  # type: ignore[attr-defined]
    return server


async def start_server(
    client_connected_cb: Callable[
        [asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None] | None
    ],
    host: str | None = None,
    port: int = 0,
    *,
    limit: int = 2**16,
    **kw: Any,
) -> ClusterServer:
    """`asyncio.start_server` on a cluster-shared port."""
    loop = asyncio.get_running_loop()

    def factory() -> asyncio.BaseProtocol:
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        return asyncio.StreamReaderProtocol(reader, client_connected_cb, loop=loop)

    return await create_server(factory, host, port, **kw)


async def _close_gracefully(server: ClusterServer) -> None:
    server.close()
    await server.wait_closed()


def _close_from_thread(loop: asyncio.AbstractEventLoop, server: ClusterServer) -> None:
    """Disconnect (on the runtime's thread): close on the server's loop, wait for connections."""
    if loop.is_closed() or not loop.is_running():
        server._server.close()
        return
    done = threading.Event()
    future = asyncio.run_coroutine_threadsafe(_close_gracefully(server), loop)
    future.add_done_callback(lambda _: done.set())
    while not done.wait(0.1):
        if not loop.is_running():
            return
