"""The public `Scheduler` interface: how a primary-distributed handle picks a worker.

A handle tells its scheduler when workers join and leave its endpoint, and asks it for a worker
for each connection it accepts. What a scheduler sees of a worker is a `WorkerState`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from ._load import LoadCounters


class SchedulerError(RuntimeError):
    """A scheduler returned something that cannot take the connection (it went to another)."""


class WorkerState:
    """One worker as a handle's scheduler sees it (per endpoint); read-only for schedulers.

    Every figure is kept by the primary without asking the worker: ``pending`` (handed, not yet
    taken), ``queued`` (accepted for it and waiting for room in its window), ``handed`` and
    ``taken`` (totals), ``open`` (handed and not yet closed: the
    worker's cluster sockets count their closes in memory shared with the primary), ``weight``
    (`cluster.fork(weight=...)`), and ``in_flight`` (requests being served, counted by the
    servers of `clusterlab.servers` in the same shared memory; None when the worker's server
    does not count them, e.g. a raw `cluster.listen()`).
    """

    __slots__ = ("link", "key", "pending", "handed", "taken", "closing", "live", "load")

    def __init__(self, link: Any, key: str, load: LoadCounters | None) -> None:
        self.link = link
        self.key = key
        self.load = load
        self.pending = 0
        self.handed = 0
        self.taken = 0
        self.closing = False  # disconnecting: it gets nothing more, keeps what it holds
        self.live = True  # False once it left the endpoint

    @property
    def worker(self) -> Any:
        """The primary's `Worker` object."""
        return self.link.worker

    @property
    def id(self) -> int:
        return int(self.link.worker.id)

    @property
    def weight(self) -> int:
        return int(getattr(self.link, "weight", 1))

    @property
    def open(self) -> int:
        load = self.load
        return self.handed - (load.closed if load is not None else 0)

    @property
    def queued(self) -> int:
        """Connections accepted for this worker and waiting for room in its window (a pick of
        a worker whose window was full: what keeps `hash` sticky)."""
        return 0

    @property
    def in_flight(self) -> int | None:
        load = self.load
        return load.in_flight if load is not None else None

    def __repr__(self) -> str:
        return (
            f"<WorkerState worker={self.id} key={self.key!r} pending={self.pending} "
            f"open={self.open} in_flight={self.in_flight} weight={self.weight}"
            f"{' closing' if self.closing else ''}{'' if self.live else ' gone'}>"
        )


class Scheduler:
    """Base class of distribution policies (subclass it, override `pick`).

    Runs in the primary, on its event loop's thread, once per accepted connection: keep `pick`
    cheap (it is on the path of every connection). A class (or "module:Name") gets one
    instance per endpoint; an instance given to `setup_primary(scheduler=...)` serves every
    endpoint (`WorkerState.key` tells them apart).
    """

    #: What `cluster.scheduling_policy` returns; defaults to the class's name.
    name: ClassVar[str] = ""
    #: True when `pick` keys on the client's address (`hash`): loads from a single address
    #: put every connection on one worker, so the lab spreads its clients over many.
    keys_on_client: ClassVar[bool] = False

    def join(self, worker: WorkerState) -> None:
        """`worker` started taking connections on an endpoint."""

    def leave(self, worker: WorkerState) -> None:
        """`worker` takes no more connections on an endpoint (it is leaving or has left)."""

    def pick(self, workers: Sequence[WorkerState], client: Any) -> WorkerState | None:
        """The worker for a connection from `client` (the peer address, `""` for Unix sockets).

        `workers`: those that can take one now (never empty; in the order they joined). Return
        one of them; or another worker of this endpoint whose window is full (the connection
        waits for it in its own queue, the others being served meanwhile); or None (it waits in the primary's queue and is offered again when a
        worker takes a connection, joins or leaves, or after 10 ms). Raising, or returning a
        worker that is unknown, gone or leaving, hands the connection to the next worker in
        turn and emits 'error' on the cluster (once per endpoint and exception type).
        """
        raise NotImplementedError

    @classmethod
    def policy_name(cls) -> str:
        return cls.name or cls.__name__


def scheduler_name(scheduler: Scheduler | type[Scheduler]) -> str:
    kind = scheduler if isinstance(scheduler, type) else type(scheduler)
    return kind.policy_name()
