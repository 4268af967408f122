"""SCHED_REUSEPORT: each worker binds its own SO_REUSEPORT socket; the kernel hashes connections.

The primary only holds a bound, never-listening reservation so that every worker's Nth
`listen(port=0)` gets the same port, and so that bind errors surface as in the other policies.
"""

from __future__ import annotations

from ._endpoint import Endpoint, bind
from ._kernel_handle import KernelHandle


class ReusePortHandle(KernelHandle):
    """A port reservation that workers join with their own SO_REUSEPORT listeners."""

    mode = "reuseport"

    def __init__(self, key: str, endpoint: Endpoint) -> None:
        super().__init__(key, endpoint, bind(endpoint, reuseport=True, listen=False))
