"""Ready-made servers that share their port through the cluster.

Same arguments as their standard-library (or library) twins; in a worker the listening socket
comes from `cluster.listen`, and a disconnect closes them gracefully (in-flight work finishes).
In the primary they behave like their plain twins.
"""

from __future__ import annotations

from ._asgi import serve_asgi
from ._asyncio import ClusterServer, HandoffServer, create_server, start_server
from ._socketserver import HTTPServer, TCPServer, ThreadingHTTPServer, ThreadingTCPServer
from ._wsgi import serve_wsgi

__all__ = [
    "ClusterServer",
    "HTTPServer",
    "HandoffServer",
    "TCPServer",
    "ThreadingHTTPServer",
    "ThreadingTCPServer",
    "create_server",
    "serve_asgi",
    "serve_wsgi",
    "start_server",
]
