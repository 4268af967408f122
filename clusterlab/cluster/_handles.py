"""The primary's shared handles: the interface every policy's handle implements, the table that
chooses one per endpoint, and the registry that owns them and their counters.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from ._endpoint import Endpoint
from ._load import LoadCounters
from ._policies import SCHED_REUSEPORT, SCHED_RR, Policy
from ._reuseport_handle import ReusePortHandle
from ._round_robin import HANDOFF_FIELDS, RoundRobinHandle
from ._scheduler import SchedulerError, WorkerState
from ._shared_handle import SharedHandle


class Handle(Protocol):
    """One endpoint's listening side in the primary, shared by the workers that listen on it."""

    key: str
    endpoint: Endpoint
    #: What the worker's side makes of the reply: "rr" (hand-off), "shared" or "reuseport".
    mode: str
    port: int

    def has(self, link: Any) -> bool:
        """Whether this worker holds the handle."""

    def add(self, link: Any) -> tuple[dict[str, Any], list[int]]:
        """Register a worker: the reply's fields and the descriptors to send it (OSError)."""

    def remove(self, link: Any) -> bool:
        """Unregister a worker (what it was handed and never took goes to others); True when
        no worker is left and the handle closed itself."""

    def pause(self, link: Any) -> bool:
        """The worker is disconnecting: give it nothing more. True when no worker is left to
        take new connections (the listener is then closed; workers may still drain it)."""

    def close(self) -> None:
        """Close the listener and whatever it still holds."""

    def queued(self) -> int:
        """Connections accepted and waiting for a worker."""

    def stats(self) -> dict[str, int]:
        """Counters since it opened (`HANDOFF_FIELDS` for hand-off handles; {} otherwise)."""

    def workers(self) -> list[WorkerState]:
        """Its workers' states (hand-off handles; [] otherwise)."""


HandleFactory = Callable[[str, Endpoint, "HandleRegistry"], Handle]


def _round_robin(key: str, endpoint: Endpoint, registry: HandleRegistry) -> Handle:
    try:
        scheduler = registry.policy.new_scheduler()
    except Exception as exc:  # noqa: BLE001 - a user's class that cannot be made: Node's rr
        registry.on_error(SchedulerError(f"scheduler for {key!r} could not be made: {exc!r}"))
        scheduler = None
    return RoundRobinHandle(
        key,
        endpoint,
        registry.loop(),
        scheduler=scheduler,
        on_error=registry.on_error,
        on_retire=registry.retire_worker,
        count=registry.count_load,
    )


def _shared(key: str, endpoint: Endpoint, registry: HandleRegistry) -> Handle:
    return SharedHandle(key, endpoint)


def _reuseport(key: str, endpoint: Endpoint, registry: HandleRegistry) -> Handle:
    return ReusePortHandle(key, endpoint)


#: Handle per policy mode (SCHED_NONE and every UDP endpoint: shared).
TABLE: dict[int, HandleFactory] = {SCHED_RR: _round_robin, SCHED_REUSEPORT: _reuseport}


def factory_for(policy: Policy, endpoint: Endpoint) -> HandleFactory:
    if endpoint.udp or (policy.mode == SCHED_REUSEPORT and endpoint.path is not None):
        return _shared
    return TABLE.get(policy.mode, _shared)


class HandleRegistry:
    """Every handle of the primary by key, the ones still draining, and their counters.

    Counters of handles that closed, and of workers that left a handle, are kept: the totals
    count everything this primary ever handed (`round_robin_stats()`).
    """

    def __init__(
        self,
        loop: Callable[[], asyncio.AbstractEventLoop],
        policy: Callable[[], Policy],
        on_error: Callable[[BaseException], None],
    ) -> None:
        self.loop = loop
        self._policy = policy
        self.on_error = on_error
        self.handles: dict[str, Handle] = {}
        # Handles whose listener closed while disconnecting workers still drain them.
        self._draining: dict[str, list[Handle]] = {}
        self._retired = dict.fromkeys(HANDOFF_FIELDS, 0)
        self._retired_by_endpoint: dict[tuple[str, str], dict[str, int]] = {}
        self._retired_workers: dict[int, dict[str, int]] = {}
        # The load counters of workers that left an endpoint, read until the worker is gone.
        self._retired_loads: dict[int, list[LoadCounters]] = {}
        #: Shared load counters under Node's round robin too (the metrics endpoint reads them).
        self.count_load = False

    @property
    def policy(self) -> Policy:
        return self._policy()

    def all(self) -> list[Handle]:
        """Every handle, live and draining (a copy: the metrics thread may read it)."""
        found = list(self.handles.values())
        for draining in list(self._draining.values()):
            found += draining
        return found

    # --- workers joining and leaving -------------------------------------------------------

    def join(self, link: Any, key: str, endpoint: Endpoint) -> tuple[dict[str, Any], list[int]]:
        """Add the worker to the key's handle (made now if new): reply fields (with `mode`)
        and descriptors (ours: the caller duplicates them). OSError when it cannot bind."""
        handle = self.handles.get(key)
        if handle is None:
            handle = factory_for(self.policy, endpoint)(key, endpoint, self)
            self.handles[key] = handle
        fields, fds = handle.add(link)
        link.keys.add(key)
        return {**fields, "mode": handle.mode}, fds

    def leave(self, link: Any, key: str) -> None:
        """The worker closed its listener on `key` (or is gone)."""
        link.keys.discard(key)
        handle = self.handles.get(key)
        if handle is not None and handle.has(link):
            if handle.remove(link):
                del self.handles[key]
                self._retire(handle)
            return
        draining = self._draining.get(key, [])
        for old in draining:
            if old.has(link):
                if old.remove(link):
                    draining.remove(old)
                    self._retire(old)
                    if not draining:
                        del self._draining[key]
                return

    def pause(self, link: Any) -> None:
        """A worker was told to disconnect: it gets no new connections; a hand-off handle
        leaves it those it holds (its servers serve them as they close)."""
        for key in list(link.keys):
            handle = self.handles.get(key)
            if handle is None or not handle.has(link):
                self.leave(link, key)
                continue
            if handle.pause(link):
                # Its listener is closed; a later listen() on this key binds a new one while
                # this one finishes with the workers still draining it.
                del self.handles[key]
                if handle.has(link):
                    self._draining.setdefault(key, []).append(handle)
                else:
                    self._retire(handle)  # it closed itself: nobody drains it
            if not handle.has(link):
                link.keys.discard(key)

    def remove(self, link: Any) -> None:
        for key in list(link.keys):
            self.leave(link, key)

    def close_all(self) -> None:
        for handle in list(self.all()):
            handle.close()
            self._retire(handle)
        self.handles.clear()
        self._draining.clear()

    # --- counters --------------------------------------------------------------------------

    def _retire(self, handle: Handle) -> None:
        stats = handle.stats()
        if not stats:
            return
        assert isinstance(handle, RoundRobinHandle)
        by_endpoint = self._retired_by_endpoint.setdefault(
            (handle.label(), handle.policy), dict.fromkeys(HANDOFF_FIELDS, 0)
        )
        for name, value in stats.items():
            if name in self._retired:
                self._retired[name] += value
                by_endpoint[name] += value

    def retire_worker(self, state: WorkerState) -> None:
        """A worker left a hand-off handle: keep its counters."""
        counts = self._retired_workers.setdefault(state.id, dict.fromkeys(_WORKER_FIELDS, 0))
        counts["handed"] += state.handed
        counts["taken"] += state.taken
        if state.load is not None:  # its servers may finish requests until it exits
            self._retired_loads.setdefault(state.id, []).append(state.load)

    def worker_gone(self, worker_id: int) -> None:
        """The worker exited: its request counts are final (kept as numbers from now on)."""
        for load in self._retired_loads.pop(worker_id, []):
            served = load.requests
            if served is not None:
                counts = self._retired_workers.setdefault(
                    worker_id, dict.fromkeys(_WORKER_FIELDS, 0)
                )
                counts["requests"] = counts.get("requests", 0) + served

    def stats(self) -> dict[str, int]:
        """Hand-off counters over every handle this primary has had, and ``queued`` now."""
        totals = dict(self._retired)
        queued = 0
        for handle in self.all():
            for name, value in handle.stats().items():
                if name in totals:
                    totals[name] += value
            queued += handle.queued()
        return {**totals, "queued": queued}

    def endpoint_stats(self) -> dict[tuple[str, str], dict[str, int]]:
        """Hand-off counters per (endpoint, policy), closed handles included, and ``queued``."""
        result = {
            labels: {**counts, "queued": 0} for labels, counts in self._retired_by_endpoint.items()
        }
        for handle in self.all():
            if not isinstance(handle, RoundRobinHandle):
                continue
            row = result.setdefault(
                (handle.label(), handle.policy), {**dict.fromkeys(HANDOFF_FIELDS, 0), "queued": 0}
            )
            for name, value in handle.stats().items():
                row[name] += value
            row["queued"] += handle.queued()
        return result

    def worker_stats(self) -> dict[int, dict[str, int | None]]:
        """Per worker id: handed and taken over all its hand-off handles (also those it left),
        requests received (None when its servers do not count them, or when nothing counts:
        Node's round robin without metrics), and now: pending, open (None when nothing counts
        closes) and in_flight (None when its servers do not count requests)."""
        result: dict[int, dict[str, int | None]] = {}
        for wid, counts in self._retired_workers.items():
            row = _row(result, wid)
            for name in ("handed", "taken", "requests"):
                _add(row, name, counts.get(name))
        for wid, loads in self._retired_loads.items():
            row = _row(result, wid)
            for load in loads:
                _add(row, "requests", load.requests)
        for handle in self.all():
            for state in handle.workers():
                row = _row(result, state.id)
                _add(row, "handed", state.handed)
                _add(row, "taken", state.taken)
                _add(row, "pending", state.pending)
                if state.load is not None:
                    _add(row, "open", state.open)
                    _add(row, "in_flight", state.in_flight)
                    _add(row, "requests", state.load.requests)
        return result


def _row(rows: dict[int, dict[str, int | None]], worker_id: int) -> dict[str, int | None]:
    return rows.setdefault(
        worker_id,
        {"handed": 0, "taken": 0, "pending": 0, "open": None, "in_flight": None, "requests": None},
    )


def _add(row: dict[str, int | None], name: str, value: int | None) -> None:
    if value is not None:
        row[name] = (row[name] or 0) + value


_WORKER_FIELDS = ("handed", "taken")
