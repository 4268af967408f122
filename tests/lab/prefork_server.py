"""A pre-fork HTTP server for the lab's external-target tests, written the way servers outside
clusterlab are: the parent binds, forks N workers that share the socket, each prints a ready
line (with its CPU affinity) and answers with its pid in X-Worker-Id.

Usage: python prefork_server.py PORT WORKERS RECORD_DIR [PIDFILE]
On SIGTERM every worker writes RECORD_DIR/<pid>.json: the requests it served and when it first
accepted a connection (the server's own view, to check the lab against).
"""

import json
import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def serve(sock: socket.socket, record: Path) -> None:
    lock = threading.Lock()
    seen = {"requests": 0, "first_connection": None}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            with lock:
                seen["first_connection"] = seen["first_connection"] or time.time()
            super().setup()

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            with lock:
                seen["requests"] += 1
            body = b"hello\n"
            self.send_response(200)
            self.send_header("X-Worker-Id", str(os.getpid()))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(sock.getsockname(), Handler, bind_and_activate=False)
    server.socket = sock
    server.daemon_threads = True

    def stop(*_: object) -> None:
        with lock:
            (record / f"{os.getpid()}.json").write_text(json.dumps(seen))
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    affinity = sorted(os.sched_getaffinity(0))
    # one write per line: workers share the output, and print() may write text and newline apart
    os.write(1, f"worker {os.getpid()} ready cpus={affinity}\n".encode())
    server.serve_forever()


def main() -> None:
    port, workers, record = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    children = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            serve(sock, record)
        children.append(pid)
    if len(sys.argv) > 4:
        Path(sys.argv[4]).write_text(str(os.getpid()))

    def stop(*_: object) -> None:
        for child in children:
            os.kill(child, signal.SIGTERM)
        for child in children:
            os.waitpid(child, 0)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
