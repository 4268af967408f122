"""Serve a WSGI app through waitress on a cluster-shared port.

waitress does the HTTP; the cluster gives it the socket. On disconnect it stops accepting,
lets requests in progress finish, closes idle keep-alive connections and returns.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from .. import cluster
from ..cluster._listeners import is_closed_listener
from ..cluster._load import LoadCounters, counters_of

try:
    import waitress
except ImportError:  # pragma: no cover - waitress is in the `servers` extra
    waitress = None


class _Counted:
    """A response iterable that ends its request's count when the server closes it."""

    def __init__(self, body: Any, load: LoadCounters) -> None:
        self._body = body
        self._load: LoadCounters | None = load

    def __iter__(self) -> Any:
        return iter(self._body)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            load, self._load = self._load, None
            if load is not None:
                load.request_finished()


def _counting(app: Any, load: LoadCounters) -> Any:
    """`app` counting its requests in flight for the primary's scheduler (shared memory)."""
    load.count_requests()

    def counted(environ: Any, start_response: Any) -> Any:
        load.request_started()
        try:
            body = app(environ, start_response)
        except BaseException:
            load.request_finished()
            raise
        if isinstance(body, list | tuple):  # already computed (waitress reads its length)
            load.request_finished()
            return body
        return _Counted(body, load)

    return counted


def serve_wsgi(
    app: Any,
    host: str | None = None,
    port: int = 8000,
    *,
    backlog: int = 511,
    **waitress_kwargs: Any,
) -> None:
    """Serve the WSGI callable `app` until the worker is disconnected or signalled.

    Extra keyword arguments are waitress adjustments (e.g. `threads=8`).
    """
    if waitress is None:
        raise ImportError("serve_wsgi needs waitress: pip install 'clusterlab[servers]'")
    sock = cluster.listen(port=port, host=host or None, backlog=backlog)
    if is_closed_listener(sock):
        return  # the worker had disconnected: a server that never serves, as Node's
    waitress_kwargs.setdefault("ident", "clusterlab")
    load = counters_of(sock)
    if load is not None:
        app = _counting(app, load)
    try:
        server = waitress.create_server(app, sockets=[sock], backlog=backlog, **waitress_kwargs)
    except OSError:
        worker = cluster.worker
        if sock.fileno() < 0 and worker is not None and worker.exited_after_disconnect:
            return  # disconnected while the server was being built: nothing to serve
        raise
    finished = threading.Event()

    def stop_accepting() -> None:
        server.accepting = False
        server.del_channel()
        sock.close()
        for channel in list(server.active_channels.values()):
            if not channel.requests:
                channel.will_close = True  # idle keep-alive connections: close them

    def close_gracefully() -> None:
        if finished.is_set():
            return
        server.trigger.pull_trigger(stop_accepting)
        while server.active_channels and not finished.is_set():
            time.sleep(0.02)
            server.trigger.pull_trigger()
        server.trigger.pull_trigger(server.close)
        finished.wait(5)

    unregister = cluster._register_server(close_gracefully)
    try:
        server.run()
    finally:
        finished.set()
        unregister()
        server.task_dispatcher.shutdown()
        sock.close()
