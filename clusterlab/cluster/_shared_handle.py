"""SCHED_NONE (and all UDP): the primary binds one socket and every worker gets a copy.

The kernel picks which worker's accept() (or recv) wins; the primary is not in the path.
"""

from __future__ import annotations

import os

from ._endpoint import Endpoint, bind
from ._kernel_handle import KernelHandle


class SharedHandle(KernelHandle):
    """One bound socket shared by every worker of an endpoint."""

    mode = "shared"

    def __init__(self, key: str, endpoint: Endpoint) -> None:
        super().__init__(key, endpoint, bind(endpoint))

    def _handed(self) -> list[int]:
        return [self._sock.fileno()]

    def _release(self) -> None:
        if self.endpoint.path is not None:
            try:
                os.unlink(self.endpoint.path)
            except OSError:
                pass
