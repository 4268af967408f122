"""SCHED_REUSEPORT: each worker binds its own SO_REUSEPORT socket; the kernel hashes connections.

The primary only holds a bound, never-listening reservation so that every worker's Nth
`listen(port=0)` gets the same port, and so that bind errors surface as in the other policies.
"""

from __future__ import annotations

from typing import Any

from ._endpoint import Endpoint, bind, bound_port


class ReusePortHandle:
    """A port reservation that workers join with their own SO_REUSEPORT listeners."""

    mode = "reuseport"

    def __init__(self, key: str, endpoint: Endpoint) -> None:
        self.key = key
        self.endpoint = endpoint
        self._sock = bind(endpoint, reuseport=True, listen=False)
        self.port = bound_port(self._sock)
        self._links: list[Any] = []

    def has(self, link: Any) -> bool:
        return link in self._links

    def add(self, link: Any) -> tuple[dict[str, Any], list[int]]:
        self._links.append(link)
        return {"port": self.port}, []

    def remove(self, link: Any) -> bool:
        if link in self._links:
            self._links.remove(link)
        if self._links:
            return False
        self.close()
        return True

    def close(self) -> None:
        self._links.clear()
        self._sock.close()

    def pause(self, link: Any) -> bool:
        """A disconnecting worker keeps nothing here: it leaves now. True when none is left."""
        return self.remove(link)

    def queued(self) -> int:
        return 0

    def stats(self) -> dict[str, int]:
        return {}

    def workers(self) -> list[Any]:
        return []
