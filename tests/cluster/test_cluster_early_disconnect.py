"""Issue 15, divergence 1's last part: `cluster.listen()` in a worker that is disconnecting or
already disconnected gives a listener that is closed from the start, no error (Node's
`server.listen()` there never listens: no error, no 'listening'; the worker ends with its
program). The ready-made servers built on it (socketserver, asyncio, serve_asgi, serve_wsgi)
return from serving at once."""

import pytest

pytestmark = pytest.mark.timeout(30)

EARLY = """
if cluster.is_primary:
    cluster.on("listening", lambda w, a: out("listening", id=w.id))
    cluster.on("exit", lambda w, code, sig: out("exit", code=code, signal=sig))
    cluster.fork()
else:
    import asyncio
    from clusterlab import servers
    from socketserver import BaseRequestHandler

    def try_accept(sock):
        try:
            sock.accept()
        except Exception as exc:
            return type(exc).__name__
        return "accepted"

    cluster.worker.disconnect()
    # disconnecting: the request never reaches the primary
    s = cluster.listen(port=0, host="127.0.0.1")
    out("disconnecting", fileno=s.fileno(), accept=try_accept(s))
    wait_disconnect()
    s = cluster.listen(port=0, host="127.0.0.1")
    out("disconnected", fileno=s.fileno(), accept=try_accept(s), connected=cluster.worker.is_connected())
    server = servers.TCPServer(("127.0.0.1", 0), BaseRequestHandler)
    server.serve_forever(poll_interval=0.05)
    server.server_close()
    out("socketserver_returned")

    async def main():
        async def client(reader, writer):
            writer.close()
        server = await servers.start_server(client, "127.0.0.1", 0)
        await asyncio.wait_for(server.serve_forever(), 5)
        out("asyncio_returned", sockets=len(server.sockets))

    asyncio.run(main())

    async def asgi_app(scope, receive, send):
        pass

    servers.serve_asgi(asgi_app, host="127.0.0.1", port=0)
    out("serve_asgi_returned")
    servers.serve_wsgi(lambda environ, start_response: [b""], host="127.0.0.1", port=0)
    out("serve_wsgi_returned")
    out("program_end")
"""


def test_listen_after_an_early_disconnect_gives_a_closed_listener(run_primary):
    # once per start method, exec and forkserver (tests/conftest.py: start_method)
    r = run_primary(EARLY, timeout=15).check(0)
    for tag in ("disconnecting", "disconnected"):
        rec = r.one(tag)
        assert rec["fileno"] == -1, r.output()
        assert rec["accept"] == "ListenerClosedError", r.output()
    assert r.one("disconnected")["connected"] is False
    r.one("socketserver_returned")
    assert r.one("asyncio_returned")["sockets"] == 0
    r.one("serve_asgi_returned")
    r.one("serve_wsgi_returned")
    r.one("program_end")
    assert r.records("listening") == [], r.output()  # the primary was told nothing
    assert r.one("exit")["code"] == 0, r.output()
