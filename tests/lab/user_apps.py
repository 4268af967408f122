"""Small user apps for the lab's asgi/wsgi/script targets (imported by workers, not by tests)."""

import os


async def asgi_app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"3")]}
    )
    await send({"type": "http.response.body", "body": b"ok\n"})


def wsgi_app(environ, start_response):
    start_response("200 OK", [("Content-Length", "3"), ("X-Served-By", str(os.getpid()))])
    return [b"ok\n"]
