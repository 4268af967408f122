"""What a lab worker serves and counts: the built-in ASGI endpoints, counting wrappers for a
user's ASGI or WSGI app, the uvicorn protocol that counts accepted connections, and the faults
the primary arms in a worker (fired by the next request).

Requests are counted by the app wrapper; connections by ``connection_made`` of the HTTP protocol
(exact, one per accepted TCP connection). WSGI apps served by waitress have no such hook, so there
a connection is a new (client address, client port) pair: exact unless a client port is reused.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
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


class SlowDown:
    """The ``slow`` fault inside a worker: until ``until`` (monotonic seconds) the built-in
    endpoints multiply every request's cost by ``factor``. Set on the channel thread, read by
    the serving thread (two floats: a torn read costs one request's factor at worst)."""

    def __init__(self) -> None:
        self.factor = 1.0
        self.until = 0.0

    def start(self, factor: float, length: float) -> None:
        self.factor, self.until = factor, time.monotonic() + length

    def now(self) -> float:
        """The factor for a request starting now (1 outside the window)."""
        return self.factor if time.monotonic() < self.until else 1.0


SLOW = SlowDown()


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


#: Cost distributions of ``/cpu`` and ``/io`` (``dist=``) and the parameters each takes.
DISTRIBUTIONS = {
    "const": ("ms",),
    "exp": ("mean",),
    "lognormal": ("mean", "sigma"),
    "bimodal": ("fast", "slow", "p"),
}
_DRAW = random.Random()


def _share(query: dict[str, list[str]], key: str, default: float) -> float:
    """A probability from ``key`` (``default`` when absent); ``BadQuery`` outside [0, 1]."""
    text = query[key][0] if key in query else str(default)
    try:
        value = float(text)
    except ValueError:
        raise BadQuery(f"{key}: expected a probability from 0 to 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise BadQuery(f"{key}: expected a probability from 0 to 1, got {text}")
    return value


def draw_ms(query: dict[str, list[str]], rng: random.Random = _DRAW) -> float:
    """One request's cost in ms: ``ms`` (``dist=const``, the default), or a draw from ``dist``:
    ``exp`` (``mean``, default 1), ``lognormal`` (``mean`` default 1, ``sigma`` default 1:
    heavy-tailed), ``bimodal`` (``fast`` ms, or ``slow`` ms with probability ``p``; defaults
    1, 50, 0.1). A draw above MAX_MS is cut to it. ``BadQuery`` on an unknown ``dist``, a
    parameter of another distribution, or a value out of range."""
    dist = query.get("dist", ["const"])[0]
    if dist not in DISTRIBUTIONS:
        raise BadQuery(f"dist: expected one of {', '.join(DISTRIBUTIONS)}, got {dist!r}")
    for key in ("ms", "mean", "sigma", "fast", "slow", "p"):
        if key in query and key not in DISTRIBUTIONS[dist]:
            raise BadQuery(f"{key}: expected only with dist={_owner(key)}, got dist={dist}")
    if dist == "const":
        return _number(query, "ms", 1.0)
    if dist == "bimodal":
        fast, slow = _number(query, "fast", 1.0), _number(query, "slow", 50.0)
        return slow if rng.random() < _share(query, "p", 0.1) else fast
    mean = _number(query, "mean", 1.0)
    if dist == "exp":
        value = rng.expovariate(1.0 / mean) if mean > 0 else 0.0
    else:
        sigma = _number(query, "sigma", 1.0)
        value = rng.lognormvariate(math.log(mean) - sigma * sigma / 2, sigma) if mean > 0 else 0.0
    return min(value, MAX_MS)


def _owner(key: str) -> str:
    return "/".join(name for name, keys in DISTRIBUTIONS.items() if key in keys)


def _costs(path: str, query: dict[str, list[str]]) -> tuple[float, float]:
    """(ms of CPU, ms of sleep) a built-in endpoint's request asks for, times the ``slow``
    fault's factor while it lasts; ``BadQuery`` if refused."""
    cpu, io = 0.0, 0.0
    if path == "/cpu":
        cpu = draw_ms(query)
    elif path == "/io":
        io = draw_ms(query)
    elif path == "/mixed":
        cpu, io = _number(query, "cpu", 1.0), _number(query, "io", 5.0)
    factor = SLOW.now()
    return cpu * factor, io * factor


async def builtin_app(scope: Scope, receive: Receive, send: Send) -> None:
    """``/hello``; ``/cpu?ms=`` N ms of CPU time; ``/io?ms=`` sleep; ``/mixed?cpu=&io=`` both
    (default 1 ms and 5 ms). N from 0 to MAX_MS; anything else is answered 400. ``/cpu`` and
    ``/io`` also draw their cost per request: ``?dist=exp&mean=2`` (see ``draw_ms``)."""
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
