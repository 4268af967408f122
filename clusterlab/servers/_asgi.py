"""Serve an ASGI app through uvicorn on a cluster-shared port.

uvicorn does the HTTP (httptools, uvloop when installed); the cluster gives it the socket. A
round-robin listener under uvloop is served through `HandoffServer`; disconnect asks uvicorn
for its own graceful shutdown (in-flight requests finish, idle keep-alive connections close).
"""

from __future__ import annotations

import asyncio
import functools
import socket
import threading
from typing import Any

from .. import cluster
from ..cluster._child import RoundRobinSocket
from ..cluster._listeners import is_closed_listener
from ..cluster._load import LoadCounters, counters_of
from ._asyncio import HandoffServer, _is_stdlib_loop

try:
    import uvicorn
except ImportError:  # pragma: no cover - uvicorn is a dependency
    uvicorn = None  # type: ignore[assignment]


def _need_uvicorn() -> Any:
    if uvicorn is None:
        raise ImportError("serve_asgi needs uvicorn (a clusterlab dependency): pip install uvicorn")
    return uvicorn


def _server_class() -> type:
    base = _need_uvicorn().Server

    class ClusterServer(base):  # type: ignore[misc, valid-type]
        """uvicorn's Server, serving a round-robin listener on any loop."""

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            sockets = list(sockets or [])
            loop = asyncio.get_running_loop()
            handoff = [
                s for s in sockets if isinstance(s, RoundRobinSocket) and not _is_stdlib_loop(loop)
            ]
            plain = [s for s in sockets if s not in handoff]
            await super().startup(sockets=plain)
            if self.should_exit:
                return
            config = self.config
            factory = functools.partial(
                config.http_protocol_class,
                config=config,
                server_state=self.server_state,
                app_state=self.lifespan.state,
            )
            for sock in handoff:
                server = HandoffServer(loop, factory, sock, {"ssl": config.ssl})
                await server.start_serving()
                self.servers.append(server)

    return ClusterServer


def _counting(app: Any, load: LoadCounters) -> Any:
    """`app` counting its HTTP requests in flight for the primary's scheduler (shared memory,
    no message: two counter updates per request)."""
    load.count_requests()

    async def counted(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        load.request_started()
        try:
            await app(scope, receive, send)
        finally:
            load.request_finished()

    return counted


def serve_asgi(
    app: Any,
    host: str | None = None,
    port: int = 8000,
    *,
    backlog: int = 511,
    **uvicorn_kwargs: Any,
) -> None:
    """Serve `app` (an ASGI app or "module:attr") until the worker is disconnected or signalled.

    Extra keyword arguments go to `uvicorn.Config` (e.g. `loop="uvloop"`, `http="httptools"`,
    `log_level="warning"`).
    """
    uv = _need_uvicorn()
    uvicorn_kwargs.setdefault("log_level", "warning")
    uvicorn_kwargs.setdefault("lifespan", "auto")
    config = uv.Config(app, backlog=backlog, **uvicorn_kwargs)
    server = _server_class()(config)
    sock = cluster.listen(port=port, host=host or None, backlog=backlog)
    if is_closed_listener(sock):
        return  # the worker had disconnected: a server that never serves, as Node's
    finished = threading.Event()
    loop_box: list[asyncio.AbstractEventLoop] = []

    async def serve() -> None:
        loop_box.append(asyncio.get_running_loop())
        load = counters_of(sock)
        if load is not None:
            config.load()
            config.loaded_app = _counting(config.loaded_app, load)
        await server.serve(sockets=[sock])

    def close_gracefully() -> None:
        if loop_box and not finished.is_set():
            loop_box[0].call_soon_threadsafe(setattr, server, "should_exit", True)
            finished.wait()

    unregister = cluster._register_server(close_gracefully)
    try:
        with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
            runner.run(serve())
    finally:
        finished.set()
        unregister()
        sock.close()
