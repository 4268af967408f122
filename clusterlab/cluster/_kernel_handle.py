"""What SCHED_NONE's `SharedHandle` and SCHED_REUSEPORT's `ReusePortHandle` share: the kernel
picks which worker accepts, so the primary only keeps which workers joined and one socket.
"""

from __future__ import annotations

import socket
from typing import Any

from ._endpoint import Endpoint, bound_port


class KernelHandle:
    """A bound socket and the workers that joined it; the kernel distributes the connections."""

    mode: str

    def __init__(self, key: str, endpoint: Endpoint, sock: socket.socket) -> None:
        self.key = key
        self.endpoint = endpoint
        self._sock = sock
        self.port = bound_port(sock)
        self._links: list[Any] = []

    def _handed(self) -> list[int]:
        """The descriptors a joining worker is sent (none: it binds its own)."""
        return []

    def _release(self) -> None:
        """What the endpoint holds besides the socket, released once it is closed (nothing)."""

    def has(self, link: Any) -> bool:
        return link in self._links

    def add(self, link: Any) -> tuple[dict[str, Any], list[int]]:
        self._links.append(link)
        return {"port": self.port}, self._handed()

    def remove(self, link: Any) -> bool:
        if link in self._links:
            self._links.remove(link)
        if self._links:
            return False
        self.close()
        return True

    def close(self) -> None:
        self._links.clear()
        if self._sock.fileno() >= 0:
            self._sock.close()
            self._release()

    def pause(self, link: Any) -> bool:
        """A disconnecting worker keeps nothing here: it leaves now. True when none is left."""
        return self.remove(link)

    def queued(self) -> int:
        return 0

    def stats(self) -> dict[str, int]:
        return {}

    def workers(self) -> list[Any]:
        return []
