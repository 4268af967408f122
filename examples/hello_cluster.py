"""The seed example: one worker per CPU, all serving port 8000 (Node's cluster docs, in Python).

Run it, then `curl localhost:8000`; Ctrl-C stops the primary and every worker.
"""

import os
from http.server import BaseHTTPRequestHandler

from clusterlab import available_parallelism, cluster
from clusterlab.servers import ThreadingHTTPServer

PORT = int(os.environ.get("PORT", "8000"))


class Hello(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("X-Worker-Id", str(cluster.worker.id))
        self.end_headers()
        self.wfile.write(
            f"hello world from worker {cluster.worker.id} (pid {os.getpid()})\n".encode()
        )

    def log_message(self, format, *args):
        pass


if cluster.is_primary:
    print(f"primary {os.getpid()} is running")
    for _ in range(available_parallelism()):
        cluster.fork()
    cluster.on(
        "listening",
        lambda worker, address: print(f"worker {worker.id} listening on port {address.port}"),
    )
    cluster.on(
        "exit",
        lambda worker, code, signal: print(f"worker {worker.process.pid} died ({signal or code})"),
    )
else:
    ThreadingHTTPServer(("", PORT), Hello).serve_forever()
