"""The primary's loop and its life: one asyncio loop in one thread (the caller's running loop
when `fork()` is called from asyncio code, otherwise a private loop run when the main script ends
or in `cluster.run()`), the work pending on it, `ref()`/`unref()`, and SIGINT/SIGTERM with the
shutdown they start. Signal handlers only schedule work on the loop.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import signal as signal_mod
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._forkserver import flush_stdio

if TYPE_CHECKING:
    from ._link import Link

#: Seconds a worker gets to finish after SIGINT/SIGTERM to the primary before it is killed.
SHUTDOWN_GRACE = float(os.environ.get("CLUSTERLAB_SHUTDOWN_GRACE", "10"))


class PrimaryLoop:
    """The loop the primary runs on, and when it ends: once no worker is alive (``links()`` is
    empty), nothing is pending and nobody holds a ``ref()``. ``abandon()`` closes every channel
    and handle (each worker exits when its channel closes)."""

    def __init__(self, links: Callable[[], list[Link]], abandon: Callable[[], None]) -> None:
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._links = links
        self.abandon = abandon
        self._pending = 0
        self._refs = 0  # cluster.ref(): keep the loop running with no worker alive
        self._idle: asyncio.Future[None] | None = None
        #: The exit status a signal asked for (None: no signal yet).
        self.stopping: int | None = None
        self._signals_installed = False
        self._exit_hook = False
        self._in_exit_hook = False
        self._shutdown_started = False
        self._shutdown_started_at = 0.0

    def ensure(self) -> asyncio.AbstractEventLoop:
        """The loop: the caller's running one, or a private one run at the main script's end."""
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if self.loop is None or (self.loop.is_closed() and not self._links()):
            if running is not None:
                self.loop = running
            else:
                self.loop = asyncio.new_event_loop()
                if not self._exit_hook:
                    _register_exit_hook(self._at_exit)
                    self._exit_hook = True
        elif running is not None and running is not self.loop:
            raise RuntimeError(
                "the cluster is bound to another event loop: fork() from one loop only"
            )
        return self.loop

    def guard(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap a loop callback: an exception escaping it is the primary's uncaught exception."""

        def guarded(*args: Any) -> Any:
            try:
                return fn(*args)
            except BaseException as exc:  # noqa: BLE001 - Node's uncaught-exception semantics
                self.fatal(exc)

        return guarded

    def later(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn(*args)` on the loop soon; the loop counts it as pending work."""
        self._pending += 1

        def run() -> None:
            self._pending -= 1
            try:
                fn(*args)
            finally:
                self.check_idle()

        self.loop.call_soon(self.guard(run))

    def fatal(self, exc: BaseException) -> None:
        if isinstance(exc, SystemExit | KeyboardInterrupt):
            code = exc.code if isinstance(exc, SystemExit) else 130
            self._hard_exit(code if isinstance(code, int) else 1)
        traceback.print_exception(exc)
        self._hard_exit(1)

    def _hard_exit(self, code: int) -> None:
        """Close every channel (workers exit when theirs closes) and leave now."""
        self.abandon()
        flush_stdio()
        os._exit(code)

    def run(self) -> None:
        """Run the loop until no worker is alive and nothing is pending."""
        if self.loop is None:
            return
        if self.loop.is_running():
            raise RuntimeError("cluster.run() cannot be called while the cluster's loop is running")
        self.install_signals()
        self.loop.run_until_complete(self._until_idle())

    async def _until_idle(self) -> None:
        self._idle = self.loop.create_future()
        self.check_idle()
        try:
            await self._idle
        finally:
            self._idle = None
        if self.stopping is not None:
            flush_stdio()
            os._exit(self.stopping)

    def check_idle(self) -> None:
        if (
            self._idle is not None
            and not self._idle.done()
            and not self._links()
            and self._pending == 0
            and (self._refs == 0 or self.stopping is not None)
        ):
            self._idle.set_result(None)

    def ref(self) -> None:
        """Keep the loop running while no worker is alive, until `unref()` (libuv's ref)."""
        self.ensure()
        self._refs += 1

    def unref(self) -> None:
        """Undo one `ref()`: the loop may end once no worker is alive and nothing is pending."""
        if self._refs == 0:
            raise RuntimeError("cluster.unref() without a cluster.ref() to undo")
        self._refs -= 1
        self.check_idle()

    def _at_exit(self) -> None:
        """The main script ended: keep serving the workers, as Node's primary does."""
        self._in_exit_hook = True
        if not self._links() and self._pending == 0 and not self._refs:
            if self.stopping is not None:
                flush_stdio()
                os._exit(self.stopping)
            return
        last = getattr(sys, "last_value", None)
        if last is not None and not isinstance(last, KeyboardInterrupt):
            self.abandon()  # the main script died: take the workers down with it
            return
        if isinstance(last, KeyboardInterrupt):
            self.stopping = 130
        if self.loop.is_closed() or self.loop.is_running():
            self.abandon()  # the caller's own loop is gone: nothing can serve the workers
            return
        if self.stopping is not None:
            self.loop.call_soon(self._begin_shutdown, self.stopping)
        self.run()

    def poll_exit(self, link: Link) -> None:
        """Watch a worker's process for its exit where no pidfd can (every 50 ms)."""

        def check() -> None:
            if link.proc.poll() is not None:
                link.check_exit()
            else:
                self.loop.call_later(0.05, self.guard(check))

        self.loop.call_later(0.05, self.guard(check))

    # --- signals ---------------------------------------------------------------------------

    def install_signals(self) -> None:
        if self._signals_installed or threading.current_thread() is not threading.main_thread():
            return
        self._signals_installed = True
        for signum, code in ((signal_mod.SIGINT, 130), (signal_mod.SIGTERM, 143)):
            current = signal_mod.getsignal(signum)
            if current in (signal_mod.SIG_DFL, signal_mod.default_int_handler):
                signal_mod.signal(signum, self._make_handler(code))

    def _make_handler(self, code: int) -> Callable[[int, Any], None]:
        def handler(signum: int, frame: Any) -> None:
            loop = self.loop
            if (
                loop is not None
                and not loop.is_closed()
                and (loop.is_running() or self._in_exit_hook)
            ):
                # Running, or about to run from the exit hook: raising there would be lost.
                self.stopping = code
                loop.call_soon_threadsafe(self._begin_shutdown, code)
                return
            # The main script is still running: stop it; the exit hook shuts the cluster down.
            self.stopping = code
            if signum == signal_mod.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(code)

        return handler

    def _begin_shutdown(self, code: int) -> None:
        """SIGINT/SIGTERM: disconnect every worker, kill stragglers after the grace period.

        A second signal (a second later or more: tools like `timeout` signal the process and
        its group at once) kills the remaining workers at once.
        """
        now = time.monotonic()
        if self.stopping is not None and self._shutdown_started:
            if now - self._shutdown_started_at >= 1.0:
                self._kill_stragglers()
            return
        self.stopping = code
        self._shutdown_started = True
        self._shutdown_started_at = now
        for link in self._links():
            link.disconnect()
        self.loop.call_later(SHUTDOWN_GRACE, self.guard(self._kill_stragglers))
        if self._idle is None:
            self.loop.create_task(self._until_idle())
        self.check_idle()

    def _kill_stragglers(self) -> None:
        for link in self._links():
            link.kill("SIGKILL")


def _register_exit_hook(hook: Callable[[], None]) -> None:
    """Run `hook` when the main script ends, before non-daemon threads are joined.

    A thread of the primary may be waiting for a worker's event: the loop must run meanwhile.
    """
    register = getattr(threading, "_register_atexit", None)
    if register is None:
        atexit.register(hook)
        return
    try:
        register(hook)
    except RuntimeError:  # already shutting down
        atexit.register(hook)
