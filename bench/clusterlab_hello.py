"""clusterlab's hello-world target for the peer benchmarks: N workers, one shared port.

    python bench/clusterlab_hello.py --workers 2 --port 8000 --policy rr|none|reuseport|p2c|...
        [--server asgi|http]

`asgi` (default) is the fastest server the package offers (uvicorn with httptools and uvloop,
through `clusterlab.servers.serve_asgi`); `http` is the seed example's ThreadingHTTPServer.
"""

from __future__ import annotations

import argparse
from http.server import BaseHTTPRequestHandler

from clusterlab import cluster
from clusterlab.servers import ThreadingHTTPServer, serve_asgi

BODY = b"hello world\n"


async def app(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"12")],
        }
    )
    await send({"type": "http.response.body", "body": BODY})


class Hello(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--policy", default="rr", help="any name cluster.scheduling_policy takes")
    parser.add_argument("--server", choices=["asgi", "http"], default="asgi")
    args = parser.parse_args()
    if cluster.is_primary:
        cluster.scheduling_policy = args.policy
        cluster.on(
            "listening", lambda w, a: print(f"worker {w.id} listening on {a.port}", flush=True)
        )
        for _ in range(args.workers):
            cluster.fork()
    elif args.server == "asgi":
        serve_asgi(app, "127.0.0.1", args.port, loop="uvloop", http="httptools", access_log=False)
    else:
        ThreadingHTTPServer(("127.0.0.1", args.port), Hello).serve_forever()


if __name__ == "__main__":
    main()
