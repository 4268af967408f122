"""The primary's end of one worker: its process (signals, exit status), its channel, and its
place in the shared handles. `Worker` calls it for send/kill/disconnect; the primary is told
of the worker's messages, disconnect and exit."""

from __future__ import annotations

import contextlib
import os
import signal as signal_mod
import socket
import subprocess
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _channel
from ._channel import Channel, ChannelClosed, ChannelError
from ._forkclient import TemplateChild
from ._worker import Worker

if TYPE_CHECKING:
    from ._primary import Primary

Process = subprocess.Popen[bytes] | TemplateChild


def signal_number(sig: str | int) -> int:
    """A signal given as a number, or a name with or without "SIG"; ValueError if unknown."""
    if isinstance(sig, int):
        return sig
    name = sig.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(signal_mod.Signals[name])
    except KeyError:
        raise ValueError(f"unknown signal {sig!r}") from None


class Link:
    """The primary's end of one worker: process, channel and its place in shared handles."""

    def __init__(
        self,
        primary: Primary,
        worker: Worker,
        proc: Process,
        sock: socket.socket,
        serialization: str,
    ) -> None:
        self.primary = primary
        self.serialization = serialization
        self.worker = worker
        self.proc = proc
        self.connected = True
        self.dead = False
        self.keys: set[str] = set()
        self.weight = 1  # cluster.fork(weight=...): for weighted schedulers
        self._retired: list[socket.socket] = []
        self.channel = Channel(
            sock,
            primary.loop,
            primary.life.guard,
            lambda kind, payload, fds: primary.dispatch(self, kind, payload, fds),
            lambda exc: primary.channel_error(self, exc, fatal=True),
            self.channel_ended,
        )
        self.pidfd: int | None = None
        self._watch_exit()

    def _watch_exit(self) -> None:
        primary, proc, loop = self.primary, self.proc, self.primary.loop
        if isinstance(proc, TemplateChild):
            # The fork server is its parent: it reaps it and reports the status (a pidfd, if
            # there is one, only signals it safely).
            proc.on_exit = primary.life.guard(self.check_exit)
            with contextlib.suppress(AttributeError, OSError):
                self.pidfd = os.pidfd_open(proc.pid)
            if proc.finished:
                loop.call_soon(proc.on_exit)
            return
        try:
            self.pidfd = os.pidfd_open(proc.pid)
            loop.add_reader(self.pidfd, primary.life.guard(self.check_exit))
        except (AttributeError, OSError):  # no pidfd: poll for the exit instead
            primary.life.poll_exit(self)

    # --- Worker methods (primary side) -----------------------------------------------------

    def send(
        self, message: Any, handle: Any, callback: Callable[[BaseException | None], Any] | None
    ) -> bool:
        kind, payload = _channel.encode_user(message, self.serialization)
        fds = [os.dup(_channel.handle_fd(handle))] if handle is not None else []
        return self.channel.write(_channel.frame(kind, payload, len(fds)), fds, callback)

    def kill(self, sig: str | int) -> None:
        number = signal_number(sig)
        if self.dead or self.proc.returncode is not None:
            return
        try:
            if self.pidfd is not None:
                signal_mod.pidfd_send_signal(self.pidfd, number)
            else:
                self.proc.send_signal(number)
        except ProcessLookupError:
            pass

    def disconnect(self) -> None:
        if not self.connected:
            return
        self.worker.exited_after_disconnect = True
        self.write(_channel.internal_frame({"act": "disconnect"}), [], None)
        self.primary.pause_handles(self)

    def is_connected(self) -> bool:
        return self.connected

    def is_dead(self) -> bool:
        return self.dead

    def retire(self, sock: socket.socket) -> None:
        """Keep a socket open until this worker is gone (see RoundRobinHandle._release)."""
        if self.connected and not self.dead:
            self._retired.append(sock)
        else:
            sock.close()

    def close_retired(self) -> None:
        for sock in self._retired:
            sock.close()
        self._retired.clear()

    # --- the channel -----------------------------------------------------------------------

    def write(
        self, data: bytes, fds: list[int], callback: Callable[[BaseException | None], Any] | None
    ) -> bool:
        return self.channel.write(data, fds, callback)

    def close_channel(self) -> None:
        """Close our end; the worker sees the channel close."""
        self.channel.close()

    def channel_ended(self) -> None:
        """The channel closed (or was dropped): the worker is disconnected."""
        if not self.connected:
            return
        self.connected = False
        left = self.channel.reader.pending()
        if left:
            self.primary.channel_error(
                self, ChannelError(f"the channel closed in the middle of a frame ({left} bytes)")
            )
        self.channel.fail_writes(ChannelClosed())
        self.channel.close()
        self.primary.on_disconnect(self)

    # --- exit ------------------------------------------------------------------------------

    def check_exit(self) -> None:
        """The process may have ended: if so, read what it left, then report its exit."""
        if self.dead:
            return
        code = self.proc.poll()
        if code is None and not getattr(self.proc, "finished", False):
            return
        # Whatever the worker wrote before dying is read first; its end closed when it died,
        # so the channel ends here too (even if a descendant inherited a copy of it).
        while self.connected and self.channel.read_once():
            pass
        self.channel_ended()
        self.dead = True
        if self.pidfd is not None:
            self.primary.loop.remove_reader(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = None
        exit_code, sig_name = _exit_status(code)
        self.primary.on_exit(self, exit_code, sig_name)


def _exit_status(code: int | None) -> tuple[int | None, str | None]:
    """(exit code, signal name) from a Popen-style return code (negative: killed by a signal)."""
    if code is None or code >= 0:
        return code, None
    try:
        return None, signal_mod.Signals(-code).name
    except ValueError:
        return None, f"SIG{-code}"
