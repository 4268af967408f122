"""Per-worker load counters the primary reads without a message: shared memory.

One small page per worker and endpoint, written by the worker (requests started and finished,
connections closed) and read by the primary's scheduler when it picks a worker.
"""

from __future__ import annotations

import mmap
import os
import socket
import threading
from typing import Any

_SIZE = 32
_FLAGS, _STARTED, _FINISHED, _CLOSED = range(4)
_REQUESTS = 1  # flag: the worker's server counts its requests


class LoadCounters:
    """flags, requests started, requests finished, connections closed: four shared uint64s."""

    def __init__(self, fd: int) -> None:
        self._map = mmap.mmap(fd, _SIZE)
        self._view = memoryview(self._map).cast("Q")
        self._lock = threading.Lock()  # a threaded server updates them from many threads

    @classmethod
    def create(cls) -> tuple[LoadCounters, int]:
        """New zeroed counters and the descriptor to share them (the caller closes it)."""
        fd = os.memfd_create("clusterlab-load", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, _SIZE)
            return cls(fd), fd
        except BaseException:
            os.close(fd)
            raise

    # --- the worker's side -----------------------------------------------------------------

    def count_requests(self) -> None:
        """Say that this worker's server counts its requests (`in_flight` is then known)."""
        with self._lock:
            self._view[_FLAGS] |= _REQUESTS

    def request_started(self) -> None:
        with self._lock:
            self._view[_STARTED] += 1

    def request_finished(self) -> None:
        with self._lock:
            self._view[_FINISHED] += 1

    def connection_closed(self) -> None:
        with self._lock:
            self._view[_CLOSED] += 1

    # --- the primary's side ----------------------------------------------------------------

    @property
    def in_flight(self) -> int | None:
        view = self._view
        if not view[_FLAGS] & _REQUESTS:
            return None
        return max(0, view[_STARTED] - view[_FINISHED])

    @property
    def requests(self) -> int | None:
        """Requests received (started: exact once the load stopped, whatever is still being
        answered), or None when the worker's server does not count them."""
        view = self._view
        return int(view[_STARTED]) if view[_FLAGS] & _REQUESTS else None

    @property
    def closed(self) -> int:
        return int(self._view[_CLOSED])

    def close(self) -> None:
        self._view.release()
        self._map.close()


def counters_of(sock: Any) -> LoadCounters | None:
    """The load counters of a cluster listener handed connections by the primary, else None."""
    return getattr(sock, "_cluster_load", None)


class HandedSocket(socket.socket):
    """A connection the primary handed over; closing it (or detaching it, as uvloop does when
    it closes the descriptor itself) is counted for the primary's scheduler."""

    _cluster_load: LoadCounters | None = None

    def _count_close(self) -> None:
        load, self._cluster_load = self._cluster_load, None
        if load is not None:
            load.connection_closed()

    def _real_close(self, _ss: Any = socket.socket) -> None:
        self._count_close()
        super()._real_close()  # type: ignore[misc]

    def detach(self) -> int:
        self._count_close()
        return super().detach()
