"""Ready-made servers that share their port through the cluster.

Same arguments as their standard-library (or library) twins; in a worker the listening socket
comes from `cluster.listen`, and a disconnect closes them gracefully.
"""

from __future__ import annotations

from ._socketserver import HTTPServer, TCPServer, ThreadingHTTPServer, ThreadingTCPServer

__all__ = ["HTTPServer", "TCPServer", "ThreadingHTTPServer", "ThreadingTCPServer"]
