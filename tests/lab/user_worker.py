"""A user's own worker script for the lab's `script` target: a stdlib HTTP server on the port the
lab passes in CLUSTERLAB_LAB_PORT, naming its worker in X-Worker-Id."""

import os
from http.server import BaseHTTPRequestHandler

from clusterlab import cluster
from clusterlab.servers import ThreadingHTTPServer


class Hello(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.send_header("X-Worker-Id", str(cluster.worker.id))
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(os.environ["CLUSTERLAB_LAB_PORT"])), Hello).serve_forever()
