"""Hello-world apps for the Python peers: an ASGI app (uvicorn) and a WSGI app (gunicorn).

Both answer every request with ``200 hello world\\n``, like ``bench/node/hello_cluster.js``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

BODY = b"hello world\n"
_ASGI_HEADERS = [(b"content-type", b"text/plain"), (b"content-length", str(len(BODY)).encode())]
_WSGI_HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def asgi_app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """ASGI hello world (lifespan events are acknowledged)."""
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200, "headers": _ASGI_HEADERS})
    await send({"type": "http.response.body", "body": BODY})


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """WSGI hello world."""
    start_response("200 OK", _WSGI_HEADERS)
    return [BODY]
