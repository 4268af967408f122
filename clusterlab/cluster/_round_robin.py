"""Primary-distributed handles (SCHED_RR and every `Scheduler`): the primary alone accepts and
hands each connection to the worker its scheduler picks (Node's round robin by default).

Each worker gets a private Unix stream pair per endpoint. A hand-off is one `sendmsg` of one
byte carrying the connection's descriptor; the worker answers each connection it takes with one
byte back, so the primary knows exactly how many are handed but untaken (never more than
`window` per worker). The primary keeps the worker's end of the pair open: connections a worker
never took (it died, or closed its listener) are read back from that end and given to another
worker, never dropped. Under a scheduler, a page of shared memory per worker (`_load`) carries
its closes and requests in flight to the scheduler without a message.

Under a scheduler, a connection picked for a worker whose window is full waits in that worker's
own queue (`_Slot.waiting`) while the primary goes on accepting and handing connections to the
others: a sticky policy (hash) waiting for one worker does not hold up the rest. At most
`WAITING` connections wait so per endpoint; then the primary stops accepting until a worker
takes one (a stalled worker cannot make the primary accept without bound).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import struct
from collections import deque
from collections.abc import Callable
from typing import Any

from ._endpoint import Endpoint, bind, bound_port
from ._load import LoadCounters
from ._scheduler import Scheduler, SchedulerError, WorkerState, scheduler_name

#: Most connections handed to one worker and not yet taken by it.
WINDOW = max(1, int(os.environ.get("CLUSTERLAB_RR_WINDOW", "4")))
#: Most accepted connections waiting for their own worker (full window), per endpoint, before
#: the primary stops accepting: 16 windows by default. Enough that the other workers go on
#: being fed while one is slow (with 2 workers, a stalled one's share of ~130 arrivals); small
#: beside a primary's descriptor limit (often a soft 1024; each waiting connection holds one),
#: so a stalled worker cannot push the primary into EMFILE. Beyond it, clients wait in the kernel's
#: backlog as they would without the queue.
WAITING = max(1, int(os.environ.get("CLUSTERLAB_RR_WAITING", str(16 * WINDOW))))
#: Counters of a hand-off handle (see `HandleRegistry.stats`).
HANDOFF_FIELDS = ("accepted", "handed", "requeued", "dropped", "policy_errors")
_ONE = [b"\x01"]
_FD = struct.Struct("i")
_RIGHTS = (socket.SOL_SOCKET, socket.SCM_RIGHTS)
# Accept errors that mean "out of resources": stop for a moment instead of spinning.
_RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
#: Seconds before a connection no worker was picked for is offered to the scheduler again.
_RETRY = 0.01


class _Slot(WorkerState):
    """One worker's hand-off pair for this endpoint (and what its scheduler sees of it)."""

    __slots__ = ("handle", "ours", "theirs", "sendmsg", "memfd", "waiting")

    def __init__(self, handle: RoundRobinHandle, link: Any, shared: bool) -> None:
        load: LoadCounters | None = None
        self.memfd = -1
        if shared:  # a scheduler or the metrics read them (else nothing is counted)
            with contextlib.suppress(AttributeError, OSError):  # no memfd: closes unseen
                load, self.memfd = LoadCounters.create()
        super().__init__(link, handle.key, load)
        self.handle = handle
        self.ours, self.theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.ours.setblocking(False)
        self.sendmsg = self.ours.sendmsg
        # accepted for this worker (its scheduler's pick) while its window was full
        self.waiting: deque[int] = deque()

    @property
    def queued(self) -> int:
        return len(self.waiting)

    def fds(self) -> list[int]:
        return [self.theirs.fileno()] + ([self.memfd] if self.memfd >= 0 else [])

    def close_shared(self) -> None:
        if self.memfd >= 0:
            os.close(self.memfd)
            self.memfd = -1


class RoundRobinHandle:
    """The primary's listening socket for one primary-distributed endpoint."""

    mode = "rr"

    def __init__(
        self,
        key: str,
        endpoint: Endpoint,
        loop: asyncio.AbstractEventLoop,
        *,
        scheduler: Scheduler | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        on_retire: Callable[[WorkerState], None] | None = None,
        count: bool = False,
    ) -> None:
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
        self._waiting = 0  # accepted, waiting in their own worker's queue (`_Slot.waiting`)
        self._peers: dict[int, Any] = {}  # queued descriptor -> client address (schedulers)
        self._reading = False
        self._resume_timer: asyncio.TimerHandle | None = None
        # None: Node's round robin, inline; otherwise every accepted connection asks it.
        self._scheduler = scheduler
        #: The policy's name for metrics: "rr" (Node's), else the scheduler's.
        self.policy = "rr" if scheduler is None else scheduler_name(scheduler)
        # Shared load counters for every worker: a scheduler reads them, and so does the
        # metrics endpoint (under Node's round robin, only when it is served).
        self._count = scheduler is not None or count
        self._on_readable = self._accept_in_turn if scheduler is None else self._accept_picked
        self._pump = self._pump_in_turn if scheduler is None else self._pump_picked
        self._on_taken = self._taken_in_turn if scheduler is None else self._taken_picked
        self._on_error = on_error
        self._on_retire = on_retire
        self._error_types: set[type[BaseException]] = set()
        # accepted: taken off the listener; handed: sent to a worker (a connection handed back
        # by a leaving worker and handed on counts twice); requeued: read back from a leaving
        # worker; dropped: closed unserved because no worker was left; policy_errors: the
        # scheduler raised or picked a worker that could not take it (it went to another).
        self.accepted = self.handed = self.requeued = self.dropped = self.policy_errors = 0

    def has(self, link: Any) -> bool:
        return any(slot.link is link for slot in self._slots)

    def workers(self) -> list[WorkerState]:
        return list(self._slots)

    def label(self) -> str:
        """The endpoint as metrics name it: HOST:PORT (the bound port) or the socket's path."""
        endpoint = self.endpoint
        if endpoint.path is not None:
            return str(endpoint.path)
        host = endpoint.address or "*"
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    def stats(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in HANDOFF_FIELDS}

    def add(self, link: Any) -> tuple[dict[str, Any], list[int]]:
        """Register a worker; returns the reply fields and the descriptors to send it (its end
        of the hand-off pair and, where there is one, its shared load counters)."""
        slot = _Slot(self, link, shared=self._count)
        self._slots.append(slot)
        self._loop.add_reader(slot.ours.fileno(), self._on_taken, slot)
        if self._scheduler is not None:
            self._call_scheduler(self._scheduler.join, slot)
        self._loop.call_soon(self._pump)
        return {"port": self.port}, slot.fds()

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
            if slot.link is link and not slot.closing:
                slot.closing = True
                if self._scheduler is not None:
                    self._call_scheduler(self._scheduler.leave, slot)
                    self._rechoose(slot)
        if any(not slot.closing for slot in self._slots):
            if self._queue:
                self._pump()
            return False
        self._close_listener()
        return True

    def close(self) -> None:
        """Close the listener and every queued connection (no worker is left to serve them)."""
        for slot in self._slots:
            self._release(slot)
        self._slots.clear()
        while self._queue:
            self._drop(self._queue.popleft())
        self._close_listener()

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
        return len(self._queue) + self._waiting

    # --- the hot path ---------------------------------------------------------------------

    def _pick(self) -> _Slot | None:
        """The next worker in turn with room; the turn only moves when a connection is handed."""
        slots = self._slots
        n = len(slots)
        for step in range(n):
            i = (self._next + step) % n
            slot = slots[i]
            if slot.pending < WINDOW and not slot.closing:
                self._next = i
                return slot
        return None

    def _hand(self, slot: _Slot, fd: int) -> bool:
        try:
            slot.sendmsg(_ONE, [(*_RIGHTS, _FD.pack(fd))])
        except OSError:
            # Full or broken: the worker is leaving; its removal re-queues what it holds.
            slot.pending = WINDOW
            return False
        os.close(fd)
        slot.pending += 1
        slot.handed += 1
        self._next += 1
        self.handed += 1
        return True

    def _pump_in_turn(self) -> None:
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

    def _accept_in_turn(self) -> None:
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
                if self._accept_failed(exc):
                    return
                continue  # the client went away before we accepted it
            self.accepted += 1
            if not self._hand(slot, fd):
                self._queue.append(fd)

    def _accept_picked(self) -> None:
        """As `_accept_in_turn`, the scheduler picking the worker once the client is known."""
        accept = self._accept
        for _ in range(256):
            if self._pick() is None:  # nobody has room: leave them in the backlog
                self._stop_reading()
                return
            try:
                fd, client = accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if self._accept_failed(exc):
                    return
                continue
            self.accepted += 1
            slot = self._choose(client)
            if slot is None:  # offered again on a retry: it waits first in line
                self._queue.append(fd)
                self._peers[fd] = client
                self._stop_reading()
                return
            if slot.pending >= WINDOW:  # its worker is full: it waits for that one alone
                slot.waiting.append(fd)
                self._peers[fd] = client
                self._waiting += 1
                if self._waiting >= WAITING:
                    self._stop_reading()
                    return
            elif not self._hand(slot, fd):
                self._queue.append(fd)
                self._peers[fd] = client

    def _accept_failed(self, exc: OSError) -> bool:
        """True when accepting must pause (out of descriptors or memory)."""
        if exc.errno in _RESOURCE_ERRORS:
            self._stop_reading()
            self._resume_timer = self._loop.call_later(0.05, self._resume)
            return True
        return False

    def _taken_in_turn(self, slot: _Slot) -> None:
        try:
            taken = len(slot.ours.recv(4096))
        except BlockingIOError:
            return
        except OSError:
            taken = 0
        slot.pending = max(0, slot.pending - taken)
        slot.taken += taken
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

    # --- the scheduler --------------------------------------------------------------------

    def _pump_picked(self) -> None:
        """Offer the queued connections to the scheduler again (a pick of a full worker waits
        in that worker's queue); then accept again, unless the waiting connections are at their
        bound."""
        queue = self._queue
        while queue:
            fd = queue[0]
            slot = self._choose(self._peer(fd))
            if slot is None:
                self._stop_reading()
                return
            queue.popleft()
            if slot.pending >= WINDOW:
                slot.waiting.append(fd)
                self._waiting += 1
            elif self._hand(slot, fd):
                self._peers.pop(fd, None)
            else:
                queue.appendleft(fd)
        if self._slots and self._waiting < WAITING:
            self._start_reading()
            self._on_readable()

    def _taken_picked(self, slot: _Slot) -> None:
        """As `_taken_in_turn`; the worker's own waiting connections go first to its room."""
        try:
            taken = len(slot.ours.recv(4096))
        except BlockingIOError:
            return
        except OSError:
            taken = 0
        slot.pending = max(0, slot.pending - taken)
        slot.taken += taken
        waiting = slot.waiting
        while waiting and slot.pending < WINDOW:
            fd = waiting.popleft()
            if not self._hand(slot, fd):
                waiting.appendleft(fd)  # broken: its removal offers them to the others
                break
            self._waiting -= 1
            self._peers.pop(fd, None)
        if not self._reading or self._queue:
            self._pump()

    def _rechoose(self, slot: _Slot) -> None:
        """The connections waiting for `slot` (it is leaving) are offered to the scheduler
        again, ahead of the queue: they were accepted before anything queued later."""
        waiting = slot.waiting
        if waiting:
            self._waiting -= len(waiting)
            self._queue.extendleft(reversed(waiting))
            waiting.clear()

    def _choose(self, client: Any) -> _Slot | None:
        """The worker the scheduler picks for `client`, perhaps one whose window is full (the
        connection waits for it); None: no worker has room, or the scheduler said to retry.

        A scheduler that fails costs no connection: it goes to the next worker in turn.
        """
        ready = [slot for slot in self._slots if slot.pending < WINDOW and not slot.closing]
        if not ready:
            return None
        assert self._scheduler is not None
        try:
            choice = self._scheduler.pick(ready, client)
        except Exception as exc:  # noqa: BLE001 - a user's policy: its failure is reported
            self._failed(exc)
            return self._pick()
        if choice is None:
            self._retry_soon()
            return None
        if isinstance(choice, _Slot) and choice.handle is self and not choice.closing:
            return choice  # full: the connection waits for that one (`_Slot.waiting`)
        self._failed(
            SchedulerError(
                f"scheduler {scheduler_name(self._scheduler)!r} picked {choice!r}, which cannot "
                f"take connections on {self.key!r}; it went to the next worker in turn"
            )
        )
        return self._pick()

    def _call_scheduler(self, method: Callable[[WorkerState], Any], slot: _Slot) -> None:
        try:
            method(slot)
        except Exception as exc:  # noqa: BLE001 - a user's policy: its failure is reported
            self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        """Count a scheduler failure; report the first of each exception type as 'error'."""
        self.policy_errors += 1
        kind = type(exc)
        if kind in self._error_types:
            return
        self._error_types.add(kind)
        if self._on_error is not None:
            self._on_error(exc)

    def _retry_soon(self) -> None:
        if self._resume_timer is None and self._sock.fileno() >= 0:
            self._resume_timer = self._loop.call_later(_RETRY, self._resume)

    def _peer(self, fd: int) -> Any:
        """The client address of a queued connection (read back ones are looked up once)."""
        peer = self._peers.get(fd)
        if peer is None:
            sock = socket.socket(fileno=fd)
            try:
                peer = sock.getpeername()
            except OSError:
                peer = ""
            finally:
                sock.detach()
            self._peers[fd] = peer
        return peer

    def _drop(self, fd: int) -> None:
        os.close(fd)
        self._peers.pop(fd, None)
        self.dropped += 1

    def _release(self, slot: _Slot) -> None:
        """Take back what the worker never took and stop handing it any more.

        Our end stays open until the worker itself is gone, so a worker that is still closing
        its servers does not see its listener fail under it.
        """
        self._loop.remove_reader(slot.ours.fileno())
        if self._scheduler is not None and not slot.closing:
            self._call_scheduler(self._scheduler.leave, slot)
        slot.live = False
        slot.closing = True
        self._rechoose(slot)
        untaken = _drain(slot.theirs)
        self.requeued += len(untaken)
        self._queue.extend(untaken)
        slot.theirs.close()
        slot.close_shared()
        slot.link.retire(slot.ours)
        if self._on_retire is not None:
            self._on_retire(slot)


def _drain(sock: socket.socket) -> list[int]:
    """Read every descriptor still queued on `sock` (the worker's end of a hand-off pair)."""
    sock.setblocking(False)
    fds: list[int] = []
    while True:
        try:
            data, taken, _, _ = socket.recv_fds(sock, 4096, 253, socket.MSG_CMSG_CLOEXEC)
        except (BlockingIOError, OSError):
            return fds
        if not data:
            return fds
        fds.extend(taken)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
