"""The worker side of supervision: heartbeats from the serving loop, `ready()`, and the
control messages both sides read."""

from __future__ import annotations

import asyncio
import math
import os
import socketserver
import time
from typing import Any

from .. import cluster

#: Key of the supervisor's own messages on the cluster channel (a user message with this key
#: is read as one; the cluster still delivers it to user 'message' listeners too).
CONTROL_KEY = "__clusterlab_supervisor__"
#: Environment of a supervised worker: its slot and the heartbeat interval the primary expects.
ENV_SLOT = "CLUSTERLAB_SUPERVISOR_SLOT"
ENV_HEARTBEAT = "CLUSTERLAB_SUPERVISOR_HEARTBEAT"


def is_control_message(message: Any) -> bool:
    """True for the supervisor's own messages (heartbeats, ready), which the cluster also
    delivers to user 'message' listeners: filter them out there with this."""
    return isinstance(message, dict) and CONTROL_KEY in message and len(message) == 1


def ready() -> None:
    """In a worker: tell the supervisor it is ready (with ``Supervisor(ready="message")``)."""
    if cluster.is_worker and cluster.worker is not None:
        cluster.worker.send({CONTROL_KEY: "ready"})


class Heartbeat:
    """Sends heartbeats to the supervisor, at most one per `interval` seconds.

    Call `beat()` from the thread whose progress matters (the serving loop), never from a
    thread of its own: a free-running thread keeps beating while the server is stuck, which is
    exactly the blind spot of uvicorn's ping thread.
    """

    def __init__(self, interval: float | None = None) -> None:
        if interval is None:
            interval = float(os.environ.get(ENV_HEARTBEAT, "1.0"))
        self.interval = interval
        self._last = -math.inf
        self._handle: asyncio.TimerHandle | None = None
        self._stopped = False

    def beat(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        worker = cluster.worker
        if worker is not None and worker.is_connected():
            worker.send({CONTROL_KEY: "heartbeat"})

    def attach_loop(self, loop: asyncio.AbstractEventLoop) -> Heartbeat:
        """Beat from `loop` itself: a blocked loop (a handler stuck in a loop, a blocking
        call) stops beating."""

        def tick() -> None:
            if self._stopped:
                return
            self.beat(force=True)
            self._handle = loop.call_later(self.interval, tick)

        self._handle = loop.call_soon(tick)  # type: ignore[assignment]
        return self

    def attach_server(self, server: socketserver.BaseServer) -> Heartbeat:
        """Beat from `server.serve_forever()` (its `service_actions` hook, called after each
        request and every `poll_interval`): a stuck single-threaded server stops beating.
        Use a `poll_interval` no longer than the interval."""
        original = server.service_actions

        def service_actions() -> None:
            original()
            if not self._stopped:
                self.beat()

        server.service_actions = service_actions  # type: ignore[method-assign]
        return self

    def stop(self) -> None:
        self._stopped = True
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def heartbeat(target: Any = None, *, interval: float | None = None) -> Heartbeat:
    """Start heartbeats in a worker.

    `target`: a `socketserver`/`http.server` server (beats from its `serve_forever` loop), an
    asyncio loop, or None for the running asyncio loop if there is one, else a manual
    `Heartbeat` whose `beat()` the serving loop calls. `interval` defaults to the one the
    supervisor asked for (environment), else 1 s. In the primary this does nothing.
    """
    hb = Heartbeat(interval)
    if not cluster.is_worker:
        hb._stopped = True
        return hb
    if isinstance(target, socketserver.BaseServer):
        return hb.attach_server(target)
    if isinstance(target, asyncio.AbstractEventLoop):
        return hb.attach_loop(target)
    if target is not None:
        raise TypeError(
            f"heartbeat() takes a socketserver server, an asyncio loop or None, got {target!r}"
        )
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return hb
    return hb.attach_loop(loop)
