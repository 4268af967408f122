"""Node's EventEmitter core for `cluster` and `Worker`.

Listeners run synchronously in registration order; `on`/`once` return the emitter so calls
chain. As in Node, emitting `'error'` with no listener raises the error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Listener = Callable[..., Any]


class _Once:
    """Wraps a `once` listener so `off(fn)` still finds it by the original function."""

    __slots__ = ("emitter", "event", "fn")

    def __init__(self, emitter: EventEmitter, event: str, fn: Listener) -> None:
        self.emitter = emitter
        self.event = event
        self.fn = fn

    def __call__(self, *args: Any) -> Any:
        self.emitter.off(self.event, self)
        return self.fn(*args)


class EventEmitter:
    """A small, exact subset of Node's `EventEmitter`."""

    def __init__(self) -> None:
        self._listeners: dict[str, list[Listener]] = {}

    def on(self, event: str, fn: Listener) -> EventEmitter:
        """Call `fn(*args)` every time `event` is emitted."""
        if not callable(fn):
            raise TypeError(f"listener for {event!r} must be callable, got {fn!r}")
        # Copy on write: an emit in progress keeps calling the listeners it started with.
        self._listeners[event] = [*self._listeners.get(event, ()), fn]
        self._listener_added(event, fn)
        return self

    add_listener = on

    def once(self, event: str, fn: Listener) -> EventEmitter:
        """Call `fn(*args)` the next time `event` is emitted, then forget it."""
        if not callable(fn):
            raise TypeError(f"listener for {event!r} must be callable, got {fn!r}")
        entry = _Once(self, event, fn)
        self._listeners[event] = [*self._listeners.get(event, ()), entry]
        self._listener_added(event, entry)
        return self

    def _listener_added(self, event: str, entry: Listener) -> None:
        """Hook for subclasses: `entry` (the listener as stored) was just added for `event`."""

    def off(self, event: str, fn: Listener) -> EventEmitter:
        """Remove the most recently added registration of `fn` for `event`."""
        found = self._listeners.get(event)
        if not found:
            return self
        for i in range(len(found) - 1, -1, -1):
            entry = found[i]
            if entry is fn or (isinstance(entry, _Once) and entry.fn is fn):
                # A new list, so an emit in progress keeps iterating its own snapshot.
                self._listeners[event] = found[:i] + found[i + 1 :]
                break
        if not self._listeners[event]:
            del self._listeners[event]
        return self

    remove_listener = off

    def remove_all_listeners(self, event: str | None = None) -> EventEmitter:
        """Remove every listener of `event`, or of every event when `event` is None."""
        if event is None:
            self._listeners.clear()
        else:
            self._listeners.pop(event, None)
        return self

    def listeners(self, event: str) -> list[Listener]:
        """The listeners of `event` (the original functions for `once` listeners)."""
        return [e.fn if isinstance(e, _Once) else e for e in self._listeners.get(event, ())]

    def _entries(self, event: str) -> list[Listener]:
        """The listeners of `event` as stored (`once` wrappers included): what emit calls."""
        return self._listeners.get(event, [])

    def listener_count(self, event: str) -> int:
        return len(self._listeners.get(event, ()))

    def emit(self, event: str, *args: Any) -> bool:
        """Call the listeners of `event` with `args`; True if there were any."""
        found = self._listeners.get(event)
        if not found:
            if event == "error":
                err = args[0] if args else None
                if isinstance(err, BaseException):
                    raise err
                raise RuntimeError(f"unhandled 'error' event: {err!r}")
            return False
        for fn in found:
            fn(*args)
        return True
