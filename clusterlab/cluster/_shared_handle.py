"""SCHED_NONE (and all UDP): the primary binds one socket and every worker gets a copy.

The kernel picks which worker's accept() (or recv) wins; the primary is not in the path.
"""

from __future__ import annotations

import os
from typing import Any

from ._endpoint import Endpoint, bind, bound_port


class SharedHandle:
    """One bound socket shared by every worker of an endpoint."""

    mode = "shared"

    def __init__(self, key: str, endpoint: Endpoint) -> None:
        self.key = key
        self.endpoint = endpoint
        self._sock = bind(endpoint)
        self.port = bound_port(self._sock)
        self._links: list[Any] = []

    def has(self, link: Any) -> bool:
        return link in self._links

    def add(self, link: Any) -> tuple[dict[str, Any], list[int]]:
        self._links.append(link)
        return {"port": self.port}, [self._sock.fileno()]

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
            if self.endpoint.path is not None:
                try:
                    os.unlink(self.endpoint.path)
                except OSError:
                    pass

    def pause(self, link: Any) -> bool:
        """A disconnecting worker keeps nothing here: it leaves now. True when none is left."""
        return self.remove(link)

    def queued(self) -> int:
        return 0

    def stats(self) -> dict[str, int]:
        return {}

    def workers(self) -> list[Any]:
        return []
