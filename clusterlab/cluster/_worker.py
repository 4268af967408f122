"""The Worker class, shared by both sides.

In the primary a Worker stands for a child process; inside a worker, `cluster.worker` stands
for the current process. The side-specific work (channel, signals, disconnect) is done by a
private link object that the primary or the worker runtime attaches.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Protocol

from ._events import EventEmitter


class _Link(Protocol):
    def send(
        self, message: Any, handle: Any, callback: Callable[[BaseException | None], Any] | None
    ) -> bool: ...
    def kill(self, signal: str | int) -> None: ...
    def disconnect(self) -> None: ...
    def is_connected(self) -> bool: ...
    def is_dead(self) -> bool: ...


class CurrentProcess:
    """`cluster.worker.process` inside a worker: the running process."""

    def __init__(self) -> None:
        self.pid = os.getpid()

    def __repr__(self) -> str:
        return f"<CurrentProcess pid={self.pid}>"


class Worker(EventEmitter):
    """A worker process, as Node's `cluster.Worker`.

    Events: 'online', 'listening'(address), 'message'(message, handle), 'disconnect',
    'exit'(code, signal), 'error'(exception).
    """

    def __init__(self, id: int = 0, process: Any = None, state: str = "none") -> None:
        super().__init__()
        self.id = id
        self.process = process
        self.state = state
        self.exited_after_disconnect: bool | None = None
        self._link: _Link | None = None

    def __repr__(self) -> str:
        pid = getattr(self.process, "pid", None)
        return f"<Worker id={self.id} pid={pid} state={self.state!r}>"

    def send(
        self,
        message: Any,
        handle: Any = None,
        callback: Callable[[BaseException | None], Any] | None = None,
    ) -> bool:
        """Send `message` (and optionally a socket as `handle`) to the other side.

        Returns False when the channel is closed (the callback then gets the error). Raises
        TypeError, sending nothing, when the serialization cannot encode the message.
        """
        if self._link is None:
            if callback is not None:
                callback(ConnectionError("worker has no channel"))
            return False
        return self._link.send(message, handle, callback)

    def kill(self, signal: str | int = "SIGTERM") -> None:
        """Primary: signal the process now. Inside a worker: disconnect gracefully, exit 0."""
        if self._link is not None:
            self._link.kill(signal)

    destroy = kill

    def disconnect(self) -> Worker:
        """Stop accepting on every cluster listener, let in-flight work finish, close the channel."""
        if self._link is not None:
            self._link.disconnect()
        return self

    def is_connected(self) -> bool:
        return self._link is not None and self._link.is_connected()

    def is_dead(self) -> bool:
        return self._link is not None and self._link.is_dead()
