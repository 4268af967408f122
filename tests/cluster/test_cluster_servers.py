"""clusterlab.servers: stdlib, asyncio (also uvloop), ASGI and WSGI servers on a shared port,
and graceful disconnect letting in-flight requests finish."""

import http.client
import signal
import socket
import threading

import pytest

pytestmark = pytest.mark.timeout(30)

POLICIES = ["rr", "none", "reuseport"]


def http_get(port: int, path: str = "/", timeout: float = 10.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def tcp_get(port: int, timeout: float = 10.0) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as c:
        c.sendall(b"ping\n")
        data = b""
        while True:
            b = c.recv(4096)
            if not b:
                return data.decode()
            data += b


# Each server body answers with the worker's pid. {server} is the worker's main code.
PRIMARY = """
        if cluster.is_primary:
            cluster.on("listening", lambda w, a: out("listening", id=w.id, port=a.port))
            cluster.on("exit", lambda w, c, s: out("exit", id=w.id, code=c, signal=s))
            cluster.fork(); cluster.fork()
        else:
"""

SERVERS = {
    "ThreadingHTTPServer": """
            from http.server import BaseHTTPRequestHandler
            from clusterlab.servers import ThreadingHTTPServer
            class H(BaseHTTPRequestHandler):
                def do_GET(self):
                    body = str(os.getpid()).encode()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                def log_message(self, *a):
                    pass
            srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
            out("server_address", port=srv.server_address[1])
            srv.serve_forever()
    """,
    "HTTPServer": """
            from http.server import BaseHTTPRequestHandler
            from clusterlab.servers import HTTPServer
            class H(BaseHTTPRequestHandler):
                def do_GET(self):
                    body = str(os.getpid()).encode()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                def log_message(self, *a):
                    pass
            srv = HTTPServer(("127.0.0.1", 0), H)
            out("server_address", port=srv.server_address[1])
            srv.serve_forever()
    """,
    "ThreadingTCPServer": """
            import socketserver
            from clusterlab.servers import ThreadingTCPServer
            class H(socketserver.StreamRequestHandler):
                def handle(self):
                    self.rfile.readline()
                    self.wfile.write(str(os.getpid()).encode())
            srv = ThreadingTCPServer(("127.0.0.1", 0), H)
            out("server_address", port=srv.server_address[1])
            srv.serve_forever()
    """,
    "TCPServer": """
            import socketserver
            from clusterlab.servers import TCPServer
            class H(socketserver.StreamRequestHandler):
                def handle(self):
                    self.rfile.readline()
                    self.wfile.write(str(os.getpid()).encode())
            srv = TCPServer(("127.0.0.1", 0), H)
            out("server_address", port=srv.server_address[1])
            srv.serve_forever()
    """,
    "start_server": """
            import asyncio
            from clusterlab.servers import start_server
            async def handle(reader, writer):
                await reader.readline()
                writer.write(str(os.getpid()).encode())
                await writer.drain()
                writer.close()
            async def main():
                server = await start_server(handle, "127.0.0.1", 0)
                out("server_address", port=server.sockets[0].getsockname()[1])
                async with server:
                    await server.serve_forever()
            asyncio.run(main())
    """,
    "create_server": """
            import asyncio
            from clusterlab.servers import create_server
            class P(asyncio.Protocol):
                def connection_made(self, t):
                    self.t = t
                def data_received(self, data):
                    self.t.write(str(os.getpid()).encode())
                    self.t.close()
            async def main():
                server = await create_server(P, "127.0.0.1", 0)
                out("server_address", port=server.sockets[0].getsockname()[1])
                async with server:
                    await server.serve_forever()
            asyncio.run(main())
    """,
    "create_server_uvloop": """
            import asyncio, uvloop
            from clusterlab.servers import create_server
            class P(asyncio.Protocol):
                def connection_made(self, t):
                    self.t = t
                def data_received(self, data):
                    self.t.write(str(os.getpid()).encode())
                    self.t.close()
            async def main():
                assert "uvloop" in type(asyncio.get_running_loop()).__module__
                server = await create_server(P, "127.0.0.1", 0)
                out("server_address", port=server.sockets[0].getsockname()[1])
                async with server:
                    await server.serve_forever()
            uvloop.run(main())
    """,
    "start_server_uvloop": """
            import asyncio, uvloop
            from clusterlab.servers import start_server
            async def handle(reader, writer):
                await reader.readline()
                writer.write(str(os.getpid()).encode())
                await writer.drain()
                writer.close()
            async def main():
                server = await start_server(handle, "127.0.0.1", 0)
                out("server_address", port=server.sockets[0].getsockname()[1])
                async with server:
                    await server.serve_forever()
            uvloop.run(main())
    """,
    "serve_asgi": """
            from clusterlab.servers import serve_asgi
            async def app(scope, receive, send):
                if scope["type"] != "http":
                    return
                body = str(os.getpid()).encode()
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
            serve_asgi(app, host="127.0.0.1", port=0)
    """,
    "serve_wsgi": """
            from clusterlab.servers import serve_wsgi
            def app(environ, start_response):
                body = str(os.getpid()).encode()
                start_response("200 OK", [("Content-Length", str(len(body)))])
                return [body]
            serve_wsgi(app, host="127.0.0.1", port=0)
    """,
}

SERVERS["serve_asgi_uvloop_httptools"] = SERVERS["serve_asgi"].replace(
    'serve_asgi(app, host="127.0.0.1", port=0)',
    'serve_asgi(app, host="127.0.0.1", port=0, loop="uvloop", http="httptools")',
)

HTTP_KINDS = {
    "ThreadingHTTPServer",
    "HTTPServer",
    "serve_asgi",
    "serve_wsgi",
    "serve_asgi_uvloop_httptools",
}


def _get(kind: str, port: int) -> str:
    if kind in HTTP_KINDS:
        status, body = http_get(port)
        assert status == 200
        return body
    return tcp_get(port)


@pytest.mark.parametrize("kind", sorted(SERVERS))
def test_server_shares_a_port_between_workers(start_primary, kind):
    p = start_primary(PRIMARY + SERVERS[kind], env={"CLUSTERLAB_SCHED_POLICY": "rr"})
    listening = p.wait_for("listening", count=2, timeout=20)
    port = listening[0]["port"]
    assert listening[1]["port"] == port
    pids = set()
    for _ in range(20):
        pids.add(int(_get(kind, port)))
    assert len(pids) == 2, f"round-robin should reach both workers, got {pids}"
    # every server whose body prints its own address sees the shared port in both workers
    if "server_address" in SERVERS[kind]:
        reported = p.wait_for("server_address", count=2)
        assert [rec["port"] for rec in reported] == [port, port]
    else:
        assert p.records("server_address") == []
    p.send_signal(signal.SIGTERM)
    assert p.wait(20) == 143, p.output()
    exits = p.records("exit")
    assert sorted((rec["code"], rec["signal"]) for rec in exits) == [(0, None), (0, None)], (
        f"workers must leave gracefully (exit 0) on the primary's SIGTERM\n{p.output()}"
    )


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("kind", ["ThreadingHTTPServer", "serve_wsgi"])
def test_server_works_under_each_policy(start_primary, kind, policy):
    p = start_primary(PRIMARY + SERVERS[kind], env={"CLUSTERLAB_SCHED_POLICY": policy})
    port = p.wait_for("listening", count=2, timeout=20)[0]["port"]
    for _ in range(5):
        assert int(_get(kind, port)) > 0
    p.send_signal(signal.SIGTERM)
    assert p.wait(20) == 143, p.output()
    exits = p.records("exit")
    assert sorted((rec["code"], rec["signal"]) for rec in exits) == [(0, None), (0, None)], (
        f"workers must leave gracefully (exit 0) on the primary's SIGTERM\n{p.output()}"
    )


SLOW = {
    "ThreadingHTTPServer": """
            from http.server import BaseHTTPRequestHandler
            from clusterlab.servers import ThreadingHTTPServer
            class H(BaseHTTPRequestHandler):
                protocol_version = "HTTP/1.1"
                def do_GET(self):
                    cluster.worker.send("in_handler")
                    time.sleep(1.0)
                    body = b"slow but complete" * 100
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                def log_message(self, *a):
                    pass
            ThreadingHTTPServer(("127.0.0.1", 0), H).serve_forever()
    """,
    "start_server": """
            import asyncio
            from clusterlab.servers import start_server
            async def handle(reader, writer):
                await reader.readline()
                cluster.worker.send("in_handler")
                await asyncio.sleep(1.0)
                writer.write(b"slow but complete" * 100)
                await writer.drain()
                writer.close()
            async def main():
                server = await start_server(handle, "127.0.0.1", 0)
                async with server:
                    await server.serve_forever()
            asyncio.run(main())
    """,
    "serve_asgi": """
            import asyncio
            from clusterlab.servers import serve_asgi
            async def app(scope, receive, send):
                if scope["type"] != "http":
                    return
                cluster.worker.send("in_handler")
                await asyncio.sleep(1.0)
                body = b"slow but complete" * 100
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
            serve_asgi(app, host="127.0.0.1", port=0)
    """,
    "serve_wsgi": """
            from clusterlab.servers import serve_wsgi
            def app(environ, start_response):
                cluster.worker.send("in_handler")
                time.sleep(1.0)
                body = b"slow but complete" * 100
                start_response("200 OK", [("Content-Length", str(len(body)))])
                return [body]
            serve_wsgi(app, host="127.0.0.1", port=0)
    """,
}


@pytest.mark.parametrize("kind", sorted(SLOW))
def test_graceful_disconnect_lets_in_flight_request_finish(start_primary, kind):
    p = start_primary(
        """
        if cluster.is_primary:
            cluster.on("listening", lambda w, a: out("listening", port=a.port))
            cluster.on("exit", lambda w, c, s: out("exit", code=c, signal=s))
            w = cluster.fork()
            w.on("message", lambda m, h: (out("disconnecting"), w.disconnect())
                 if m == "in_handler" else None)
        else:
"""
        + SLOW[kind]
    )
    port = p.wait_for("listening", timeout=20)[0]["port"]
    result = {}

    def client():
        try:
            if kind == "start_server":
                result["body"] = tcp_get(port)
                result["status"] = 200
            else:
                result["status"], result["body"] = http_get(port)
        except Exception as e:  # reported below
            result["error"] = repr(e)

    t = threading.Thread(target=client)
    t.start()
    p.wait_for("disconnecting", timeout=10)
    t.join(15)
    assert "error" not in result, f"{result}\n{p.output()}"
    assert result["status"] == 200
    assert result["body"] == "slow but complete" * 100
    assert p.wait(15) == 0, p.output()
    exits = p.records("exit")
    assert len(exits) == 1 and (exits[0]["code"], exits[0]["signal"]) == (0, None)


def test_servers_in_the_primary_behave_like_their_plain_twins(run_primary):
    r = run_primary("""
        import http.client
        from http.server import BaseHTTPRequestHandler
        from clusterlab.servers import ThreadingHTTPServer
        class H(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Length", "7")
                self.end_headers()
                self.wfile.write(b"primary")
            def log_message(self, *a):
                pass
        srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        port = srv.server_address[1]
        t = threading.Thread(target=srv.serve_forever, daemon=True)
        t.start()
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", "/")
        resp = c.getresponse()
        out("resp", status=resp.status, body=resp.read().decode(), port=port)
        srv.shutdown()
        srv.server_close()
    """).check()
    rec = r.one("resp")
    assert (rec["status"], rec["body"]) == (200, "primary") and rec["port"] > 0


@pytest.mark.parametrize("kind", ["ThreadingHTTPServer", "TCPServer"])
def test_disconnect_before_serve_forever_starts_still_exits_zero(run_primary, kind):
    # A disconnect (e.g. the primary's SIGTERM) can land between building the server (the
    # worker already reported 'listening') and serve_forever(): serve_forever must then
    # return at once and the worker exit 0, as after any graceful disconnect.
    r = run_primary(
        f"""
        if cluster.is_primary:
            w = cluster.fork()
            when_ready(w, w.disconnect)  # once the server is built ('listening' comes earlier)
            w.on("exit", lambda c, s: out("exit", code=c, signal=s))
        else:
            import socketserver
            from clusterlab.servers import {kind} as Server
            srv = Server(("127.0.0.1", 0), socketserver.BaseRequestHandler)
            ready()
            wait_disconnect()
            t0 = time.time()
            srv.serve_forever()
            out("returned", after=time.time() - t0)
    """,
        timeout=20,
    ).check()
    rec = r.one("exit")
    assert (rec["code"], rec["signal"]) == (0, None), r.output()
    assert r.one("returned")["after"] < 2
