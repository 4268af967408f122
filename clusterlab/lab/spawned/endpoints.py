"""What a lab worker serves and counts: the built-in ASGI endpoints, counting wrappers for a
user's ASGI or WSGI app, the uvicorn protocol that counts accepted connections, and the faults
the primary arms in a worker (fired by the next request).

Requests are counted by the app wrapper; connections by ``connection_made`` of the HTTP protocol
(exact, one per accepted TCP connection). WSGI apps served by waitress have no such hook, so there
a connection is a new (client address, client port) pair: exact unless a client port is reused.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


@dataclass
class Counters:
    """This worker's totals since it started; read from another thread by the reporter."""

    worker_id: str = "0"
    requests: int = 0
    connections: int = 0
    _clients: set[tuple[str, str]] = field(default_factory=set)

    def snapshot(self) -> dict[str, Any]:
        return {"requests": self.requests, "connections": self.connections, "t": time.time()}


COUNTERS = Counters()


class InjectedFault(RuntimeError):
    """The exception a lab fault raises inside a request handler."""


@dataclass
class FaultSwitch:
    """A fault the primary armed in this worker (over the cluster channel, on the channel
    thread), fired by the next request on the serving thread. ``on_fire`` tells the primary
    when it fired; it is called before the fault acts (a hang never returns)."""

    armed: dict[str, Any] | None = None
    on_fire: Callable[[dict[str, Any]], None] = lambda fault: None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def arm(self, fault: dict[str, Any]) -> None:
        with self._lock:
            self.armed = fault

    def fire_if_armed(self) -> None:
        """In a request handler: act out the armed fault, if any. ``hang`` blocks this thread
        for good (an asyncio server's loop with it, so heartbeats stop); ``exception`` raises
        ``InjectedFault`` (the server answers 500), or with ``fatal`` prints it as uncaught
        and exits 1 at once, as an uncaught exception ends a Node.js worker."""
        if self.armed is None:
            return
        with self._lock:
            fault, self.armed = self.armed, None
        if fault is None:
            return
        self.on_fire(fault)
        if fault["kind"] == "hang":
            threading.Event().wait()
        error = InjectedFault(f"lab fault {fault.get('id')}: exception while serving a request")
        if not fault.get("fatal"):
            raise error
        try:
            raise error
        except InjectedFault:
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(1)


FAULTS = FaultSwitch()


class CountingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, counting every accepted connection."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        COUNTERS.connections += 1
        super().connection_made(transport)


def counting_asgi(app: AsgiApp) -> AsgiApp:
    """Wrap an ASGI app: count HTTP requests and add an ``X-Worker-Id`` response header."""
    header = (b"x-worker-id", COUNTERS.worker_id.encode())

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        COUNTERS.requests += 1
        FAULTS.fire_if_armed()

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), header]}
            await send(message)

        await app(scope, receive, send_with_header)

    return wrapped


def counting_wsgi(app: WsgiApp) -> WsgiApp:
    """Wrap a WSGI app: count requests and new client (address, port) pairs, add ``X-Worker-Id``."""

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        COUNTERS.requests += 1
        FAULTS.fire_if_armed()
        client = (str(environ.get("REMOTE_ADDR")), str(environ.get("REMOTE_PORT")))
        if client not in COUNTERS._clients:
            COUNTERS._clients.add(client)
            COUNTERS.connections += 1

        def start(status: str, headers: list[tuple[str, str]], *exc: Any) -> Any:
            return start_response(status, [*headers, ("X-Worker-Id", COUNTERS.worker_id)], *exc)

        return app(environ, start)

    return wrapped


def _busy(ms: float) -> None:
    # CPU time, not wall time: a worker preempted mid-request still does the full work, so
    # /cpu?ms=N costs N ms of CPU whatever the oversubscription.
    end = time.thread_time() + ms / 1000.0
    while time.thread_time() < end:
        pass


#: The most milliseconds of CPU or sleep one request may ask for; beyond it: 400.
MAX_MS = 1000.0


class BadQuery(ValueError):
    """A query parameter the built-in endpoints refuse (answered 400, with this message)."""


def _number(query: dict[str, list[str]], key: str, default: float) -> float:
    """Milliseconds from ``key`` in the query: ``default`` when it is absent, ``BadQuery`` when
    it is not a number from 0 to MAX_MS (blank, ``abc``, ``nan``, ``-1``, ``5000``)."""
    if key not in query:
        return default
    text = query[key][0]
    try:
        value = float(text)
    except ValueError:
        raise BadQuery(f"{key}: expected a number of milliseconds, got {text!r}") from None
    if not 0.0 <= value <= MAX_MS:  # also refuses nan
        raise BadQuery(f"{key}: expected 0 to {MAX_MS:g} ms, got {text}")
    return value


def _costs(path: str, query: dict[str, list[str]]) -> tuple[float, float]:
    """(ms of CPU, ms of sleep) a built-in endpoint's request asks for; ``BadQuery`` if refused."""
    if path == "/cpu":
        return _number(query, "ms", 1.0), 0.0
    if path == "/io":
        return 0.0, _number(query, "ms", 1.0)
    if path == "/mixed":
        return _number(query, "cpu", 1.0), _number(query, "io", 5.0)
    return 0.0, 0.0


async def builtin_app(scope: Scope, receive: Receive, send: Send) -> None:
    """``/hello``; ``/cpu?ms=`` N ms of CPU time; ``/io?ms=`` sleep; ``/mixed?cpu=&io=`` both
    (default 1 ms and 5 ms). N from 0 to MAX_MS; anything else is answered 400."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    path = scope["path"]
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    status, body = 200, b"hello world\n"
    if path not in ("/hello", "/cpu", "/io", "/mixed"):
        status, body = 404, b"not found\n"
    else:
        try:
            cpu_ms, io_ms = _costs(path, query)
        except BadQuery as exc:
            status, body = 400, f"{exc}\n".encode()
        else:
            if path in ("/cpu", "/mixed"):
                _busy(cpu_ms)
            if path in ("/io", "/mixed"):
                await asyncio.sleep(io_ms / 1000.0)
            body = b"hello world\n" if path == "/hello" else f"{path[1:]}\n".encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
