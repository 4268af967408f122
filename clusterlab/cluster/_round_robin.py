"""SCHED_RR: the primary alone accepts and hands connections to workers in turn.

Each worker gets a private Unix stream pair per endpoint. A hand-off is one `sendmsg` of one
byte carrying the connection's descriptor; the worker answers each connection it takes with one
byte back, so the primary knows exactly how many are handed but untaken (never more than
`window` per worker). The primary keeps the worker's end of the pair open: connections a worker
never took (it died, or closed its listener) are read back from that end and given to another
worker, never dropped.
"""

from __future__ import annotations

import array
import asyncio
import errno
import os
import socket
import struct
import weakref
from collections import deque
from typing import Any

from ._endpoint import Endpoint, bind, bound_port

#: Most connections handed to one worker and not yet taken by it.
WINDOW = max(1, int(os.environ.get("CLUSTERLAB_RR_WINDOW", "4")))
_ONE = [b"\x01"]
_FD = struct.Struct("i")
_RIGHTS = (socket.SOL_SOCKET, socket.SCM_RIGHTS)
_DRAIN_FDS = socket.CMSG_SPACE(253 * 4)
# Accept errors that mean "out of resources": stop for a moment instead of spinning.
_RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}

#: Counters of every RR handle this process has had (see `stats()`).
_TOTALS = {"accepted": 0, "handed": 0, "requeued": 0, "dropped": 0}


class _Slot:
    """One worker's hand-off pair for this endpoint."""

    __slots__ = ("link", "ours", "theirs", "in_flight", "sendmsg", "closing")

    def __init__(self, link: Any) -> None:
        self.link = link
        self.closing = False  # disconnecting: hand it nothing more, leave it what it holds
        self.ours, self.theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.ours.setblocking(False)
        self.in_flight = 0
        self.sendmsg = self.ours.sendmsg


class RoundRobinHandle:
    """The primary's listening socket for one endpoint under SCHED_RR."""

    mode = "rr"

    def __init__(self, key: str, endpoint: Endpoint, loop: asyncio.AbstractEventLoop) -> None:
        self.key = key
        self.endpoint = endpoint
        self._loop = loop
        self._sock = bind(endpoint)
        self._sock.setblocking(False)
        self._accept = self._sock._accept  # type: ignore[attr-defined]  # no wrapper objects
        self._lfd = self._sock.fileno()
        self.port = bound_port(self._sock)
        self._slots: list[_Slot] = []
        self._next = 0
        self._queue: deque[int] = deque()  # accepted, waiting for a worker with room
        self._reading = False
        self._resume_timer: asyncio.TimerHandle | None = None
        # accepted: taken off the listener; handed: sent to a worker (a connection handed back
        # by a leaving worker and handed on counts twice); requeued: read back from a leaving
        # worker; dropped: closed unserved because no worker was left.
        self.accepted = self.handed = self.requeued = self.dropped = 0
        _LIVE.add(self)

    def has(self, link: Any) -> bool:
        return any(slot.link is link for slot in self._slots)

    def add(self, link: Any) -> tuple[dict[str, Any], list[int]]:
        """Register a worker; returns the reply fields and the descriptor to send it."""
        slot = _Slot(link)
        self._slots.append(slot)
        self._loop.add_reader(slot.ours.fileno(), self._on_taken, slot)
        self._loop.call_soon(self._pump)
        return {"port": self.port}, [slot.theirs.fileno()]

    def remove(self, link: Any) -> bool:
        """Unregister a worker, giving its untaken connections to others. True when empty."""
        for i, slot in enumerate(self._slots):
            if slot.link is link:
                del self._slots[i]
                self._release(slot)
                break
        if self._slots:
            self._pump()
            return False
        self.close()
        return True

    def pause(self, link: Any) -> bool:
        """A worker is disconnecting: hand it nothing more, but leave it what it already holds.

        A closing clusterlab server takes and serves the connections handed to it before it
        closes its listener (taking them back would bounce them to nobody when every worker is
        leaving). True when no worker is left to take new connections: the listening socket is
        then closed at once, so new clients are refused rather than queued for nobody.
        """
        for slot in self._slots:
            if slot.link is link:
                slot.closing = True
        if any(not slot.closing for slot in self._slots):
            return False
        self._close_listener()
        return True

    def close(self) -> None:
        """Close the listener and every queued connection (no worker is left to serve them)."""
        for slot in self._slots:
            self._release(slot)
        self._slots.clear()
        while self._queue:
            os.close(self._queue.popleft())
            self.dropped += 1
        self._close_listener()
        _retire_counts(self)
        _LIVE.discard(self)

    def _close_listener(self) -> None:
        self._stop_reading()
        if self._resume_timer is not None:
            self._resume_timer.cancel()
            self._resume_timer = None
        if self._sock.fileno() >= 0:
            self._sock.close()
            if self.endpoint.path is not None:
                _unlink(self.endpoint.path)

    def queued(self) -> int:
        return len(self._queue)

    # --- the hot path ---------------------------------------------------------------------

    def _pick(self) -> _Slot | None:
        """The next worker in turn with room; the turn only moves when a connection is handed."""
        slots = self._slots
        n = len(slots)
        for step in range(n):
            i = (self._next + step) % n
            slot = slots[i]
            if slot.in_flight < WINDOW and not slot.closing:
                self._next = i
                return slot
        return None

    def _hand(self, slot: _Slot, fd: int) -> bool:
        try:
            slot.sendmsg(_ONE, [(*_RIGHTS, _FD.pack(fd))])
        except OSError:
            # Full or broken: the worker is leaving; its removal re-queues what it holds.
            slot.in_flight = WINDOW
            return False
        os.close(fd)
        slot.in_flight += 1
        self._next += 1
        self.handed += 1
        return True

    def _pump(self) -> None:
        queue = self._queue
        while queue:
            slot = self._pick()
            if slot is None:
                self._stop_reading()
                return
            fd = queue.popleft()
            if not self._hand(slot, fd):
                queue.appendleft(fd)
        if self._slots:
            self._start_reading()
            self._on_readable()

    def _on_readable(self) -> None:
        accept = self._accept
        for _ in range(256):
            slot = self._pick()
            if slot is None:
                self._stop_reading()
                return
            try:
                fd, _ = accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRORS:
                    self._stop_reading()
                    self._resume_timer = self._loop.call_later(0.05, self._resume)
                    return
                continue  # the client went away before we accepted it
            self.accepted += 1
            if not self._hand(slot, fd):
                self._queue.append(fd)

    def _on_taken(self, slot: _Slot) -> None:
        try:
            taken = len(slot.ours.recv(4096))
        except BlockingIOError:
            return
        except OSError:
            taken = 0
        slot.in_flight = max(0, slot.in_flight - taken)
        if not self._reading or self._queue:
            self._pump()

    def _resume(self) -> None:
        self._resume_timer = None
        self._pump()

    def _start_reading(self) -> None:
        if not self._reading and self._sock.fileno() >= 0:
            self._loop.add_reader(self._lfd, self._on_readable)
            self._reading = True

    def _stop_reading(self) -> None:
        if self._reading:
            self._loop.remove_reader(self._lfd)
            self._reading = False

    def _release(self, slot: _Slot) -> None:
        """Take back what the worker never took and stop handing it any more.

        Our end stays open until the worker itself is gone, so a worker that is still closing
        its servers does not see its listener fail under it.
        """
        self._loop.remove_reader(slot.ours.fileno())
        untaken = _drain(slot.theirs)
        self.requeued += len(untaken)
        self._queue.extend(untaken)
        slot.theirs.close()
        slot.link.retire(slot.ours)


_LIVE: weakref.WeakSet[RoundRobinHandle] = weakref.WeakSet()
_FIELDS = ("accepted", "handed", "requeued", "dropped")


def stats() -> dict[str, int]:
    """SCHED_RR counters summed over every hand-off socket this primary has had.

    ``accepted`` connections taken off listeners, ``handed`` hand-offs to workers (a connection
    read back from a leaving worker and handed on counts twice), ``requeued`` connections read
    back from workers that left before taking them, ``dropped`` connections closed unserved
    because no worker was left, and ``queued`` those waiting now. A lost connection is one that
    was accepted and ``dropped``.
    """
    totals = dict.fromkeys(_FIELDS, 0)
    queued = 0
    for handle in list(_LIVE):
        for name in _FIELDS:
            totals[name] += getattr(handle, name)
        queued += len(handle._queue)
    for name in _FIELDS:
        totals[name] += _TOTALS[name]
    return {**totals, "queued": queued}


def _retire_counts(handle: RoundRobinHandle) -> None:
    for name in _FIELDS:
        _TOTALS[name] += getattr(handle, name)
        setattr(handle, name, 0)


def _drain(sock: socket.socket) -> list[int]:
    """Read every descriptor still queued on `sock` (the worker's end of a hand-off pair)."""
    sock.setblocking(False)
    fds: list[int] = []
    while True:
        try:
            data, ancdata, _, _ = sock.recvmsg(4096, _DRAIN_FDS, socket.MSG_CMSG_CLOEXEC)
        except (BlockingIOError, OSError):
            return fds
        if not data:
            return fds
        for level, kind, payload in ancdata:
            if (level, kind) == _RIGHTS:
                fds.extend(array.array("i", payload[: len(payload) - len(payload) % 4]))


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
