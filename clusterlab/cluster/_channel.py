"""The private message channel between the primary and one worker: frames, and the primary's
non-blocking end of it (`Channel`).

A Unix stream socket pair carrying length-prefixed frames. Descriptors travel with
SCM_RIGHTS and are matched to frames in order (a frame header says how many it owns).
Internal cluster messages and user messages are different frame kinds, so a user message
can never be taken for an internal one, and pickle is only ever read from this channel.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import pickle
import socket
import stat
import struct
from collections import deque
from collections.abc import Callable
from typing import Any

import orjson

from ._counts import COUNTS

#: Frame kinds.
INTERNAL = 1
USER_JSON = 2
USER_PICKLE = 3

_HEADER = struct.Struct("<2sBBI")
HEADER_SIZE = _HEADER.size
_MAGIC = b"CL"
#: Largest payload accepted from the other side (a larger claim means a broken stream).
MAX_FRAME = 256 * 1024 * 1024
#: Most descriptors one frame may carry (the kernel's SCM_MAX_FD is 253).
MAX_FDS = 64
#: Bytes asked of one recvmsg: as many as fit below glibc's mmap threshold (128 KiB, the
#: buffer's header included). A larger buffer is mmapped, shrunk by mremap and unmapped on every
#: read: three more syscalls a message (strace of 3,000 round trips: 6,000 each of mmap, mremap
#: and munmap at 256 KiB; none at 120 KiB).
_RECV_SIZE = 120 * 1024
_ORJSON_OPTS = orjson.OPT_NON_STR_KEYS


class ChannelError(Exception):
    """The other side sent something that is not a valid frame or message."""


class ChannelClosedError(ConnectionError):
    """The channel is closed; nothing more can be sent."""


def encode_user(message: Any, serialization: str) -> tuple[int, bytes]:
    """Encode a user message, raising TypeError when the serialization cannot carry it."""
    if serialization == "advanced":
        try:
            return USER_PICKLE, pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError, RecursionError) as exc:
            raise TypeError(f"message cannot be serialized (advanced): {exc}") from exc
    return USER_JSON, dumps_json(message)


def dumps_json(message: Any) -> bytes:
    """JSON-encode like Node's JSON.stringify would accept; TypeError when it can't."""
    try:
        return orjson.dumps(message, option=_ORJSON_OPTS)
    except orjson.JSONEncodeError as exc:
        if "Integer exceeds" not in str(exc):
            raise TypeError(f"message cannot be serialized (json): {exc}") from exc
    try:  # integers beyond 64 bits: the standard library handles them
        return json.dumps(message, allow_nan=False, separators=(",", ":")).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise TypeError(f"message cannot be serialized (json): {exc}") from exc


def decode_user(kind: int, payload: bytes, serialization: str) -> Any:
    """Decode a user frame; ChannelError when it is not valid for this channel."""
    if kind == USER_JSON:
        try:
            return orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise ChannelError(f"invalid JSON message: {exc}") from None
    if kind == USER_PICKLE and serialization == "advanced":
        try:
            return pickle.loads(payload)
        except Exception as exc:
            raise ChannelError(f"invalid advanced message: {exc!r}") from None
    raise ChannelError(f"unexpected frame kind {kind} for serialization {serialization!r}")


def decode_internal(payload: bytes) -> dict[str, Any]:
    try:
        message = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise ChannelError(f"invalid internal message: {exc}") from None
    if not isinstance(message, dict) or not isinstance(message.get("act"), str):
        raise ChannelError(f"invalid internal message: {message!r}")
    return message


def frame(kind: int, payload: bytes, nfds: int = 0) -> bytes:
    if len(payload) > MAX_FRAME:
        raise ValueError(f"message of {len(payload)} bytes exceeds the {MAX_FRAME}-byte limit")
    return _HEADER.pack(_MAGIC, kind, nfds, len(payload)) + payload


def internal_frame(message: dict[str, Any], nfds: int = 0) -> bytes:
    return frame(INTERNAL, orjson.dumps(message), nfds)


def recv_some(sock: socket.socket) -> tuple[bytes, list[int]]:
    """One recvmsg: the bytes and the descriptors that came with them (close-on-exec)."""
    data, fds, flags, _ = socket.recv_fds(sock, _RECV_SIZE, MAX_FDS, socket.MSG_CMSG_CLOEXEC)
    if flags & socket.MSG_CTRUNC:
        for fd in fds:
            _close_fd(fd)
        raise ChannelError("descriptors were truncated in transit")
    return data, fds


def _close_fd(fd: int) -> None:
    try:
        socket.close(fd)
    except OSError:
        pass


class FrameReader:
    """Reassembles frames from stream chunks and matches descriptors to them."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._fds: deque[int] = deque()

    def feed(self, data: bytes, fds: list[int]) -> None:
        self._buf += data
        self._fds.extend(fds)

    def frames(self) -> list[tuple[int, bytes, list[int]]]:
        """Take every complete frame as (kind, payload, fds); ChannelError if the stream is broken.

        Frames are taken out before any is handled, so a handler may read the channel again.
        """
        buf = self._buf
        offset = 0
        found: list[tuple[int, bytes, list[int]]] = []
        try:
            while len(buf) - offset >= HEADER_SIZE:
                magic, kind, nfds, length = _HEADER.unpack_from(buf, offset)
                if magic != _MAGIC or length > MAX_FRAME or nfds > MAX_FDS:
                    raise ChannelError(
                        f"broken frame header (magic={bytes(magic)!r}, length={length}, fds={nfds})"
                    )
                end = offset + HEADER_SIZE + length
                if len(buf) < end:
                    break
                if nfds > len(self._fds):
                    raise ChannelError(f"frame claims {nfds} descriptors, {len(self._fds)} arrived")
                fds = [self._fds.popleft() for _ in range(nfds)]
                found.append((kind, bytes(buf[offset + HEADER_SIZE : end]), fds))
                offset = end
        finally:
            if offset:
                del buf[:offset]
        return found

    def pending(self) -> int:
        """Bytes of a frame begun but not complete."""
        return len(self._buf)

    def close(self) -> None:
        """Close descriptors that arrived without a frame to claim them."""
        while self._fds:
            _close_fd(self._fds.popleft())
        self._buf.clear()


def handle_fd(handle: Any) -> int:
    """The descriptor of something passed as a handle (anything with fileno())."""
    try:
        fd = handle.fileno()
    except AttributeError:
        raise TypeError(f"handle must have a fileno() method, got {handle!r}") from None
    if not isinstance(fd, int) or fd < 0:
        raise TypeError(f"handle {handle!r} has no open descriptor")
    try:
        is_socket = stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        raise TypeError(f"handle {handle!r} has no open descriptor") from None
    if not is_socket:
        raise TypeError(f"handle must be a socket (a server or a connection), got {handle!r}")
    return fd


def socket_from_fd(fd: int) -> socket.socket:
    """Wrap a received descriptor; its family and type are read from the descriptor."""
    try:
        return socket.socket(fileno=fd)
    except OSError:
        _close_fd(fd)
        raise


def read_frames(
    sock: socket.socket, reader: FrameReader
) -> list[tuple[int, bytes, list[int]]] | None:
    """One read of `sock` into `reader`: the frames now complete, or None at the end of the stream
    (or a socket error). BlockingIOError when nothing is there; ChannelError when the stream is
    broken (descriptors truncated, a bad frame). Both sides of the channel read this way."""
    try:
        data, fds = recv_some(sock)
    except (BlockingIOError, InterruptedError, ChannelError):
        raise
    except OSError:
        return None
    if not data:
        return None
    reader.feed(data, fds)
    return reader.frames()


class ChannelClosed(ConnectionError):
    """The worker's channel is closed."""

    def __init__(self) -> None:
        super().__init__(errno.EPIPE, "channel closed")


_Callback = Callable[[BaseException | None], Any]


class Channel:
    """The primary's end of one worker's channel, non-blocking on the primary's loop.

    Writes are queued and flushed when the socket is writable; frames without descriptors are
    joined into one write, a frame's descriptors travel with its first byte. Reads are split
    into frames and handed to `on_frame`; `on_broken` gets a stream that can't be trusted,
    `on_eof` the end of the stream. Callbacks run through `guard` (the primary's uncaught-
    exception handling).
    """

    def __init__(
        self,
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop,
        guard: Callable[[Callable[..., Any]], Callable[..., Any]],
        on_frame: Callable[[int, bytes, list[int]], None],
        on_broken: Callable[[ChannelError], None],
        on_eof: Callable[[], None],
    ) -> None:
        self.sock = sock
        self.reader = FrameReader()
        self.open = True
        self._loop = loop
        self._guard = guard
        self._on_frame = on_frame
        self._on_broken = on_broken
        self._on_eof = on_eof
        self._out: list[tuple[memoryview, list[int], _Callback | None]] = []
        self._writing = False
        loop.add_reader(sock.fileno(), guard(self.read_once))

    # --- writing ---------------------------------------------------------------------------

    def write(self, data: bytes, fds: list[int], callback: _Callback | None) -> bool:
        """Queue a frame (its descriptors are ours to close once sent); False when closed."""
        if not self.open:
            for fd in fds:
                os.close(fd)
            if callback is not None:
                self._loop.call_soon(self._guard(callback), ChannelClosed())
            return False
        COUNTS.frames_sent += 1
        self._out.append((memoryview(data), fds, callback))
        if not self._writing:
            self._flush()
        return True

    def _flush(self) -> None:
        out, sock = self._out, self.sock
        while out:
            if not out[0][1] and len(out) > 1 and not out[1][1]:
                self._coalesce()
            view, fds, callback = out[0]
            try:
                sent = socket.send_fds(sock, [view], fds) if fds else sock.send(view)
            except BlockingIOError:
                break
            except OSError as exc:
                self.fail_writes(exc)
                return
            if fds:
                for fd in fds:
                    os.close(fd)
                fds = []
            if sent < len(view):
                out[0] = (view[sent:], fds, callback)
                break
            out.pop(0)
            if callback is not None:
                self._loop.call_soon(self._guard(callback), None)
        if bool(out) != self._writing:
            self._want_writable(bool(out))

    def _want_writable(self, want: bool) -> None:
        if want != self._writing:
            if want:
                self._loop.add_writer(self.sock.fileno(), self._guard(self._flush))
            else:
                self._loop.remove_writer(self.sock.fileno())
            self._writing = want

    def _coalesce(self) -> None:
        """Join queued frames without descriptors into one write (up to 1 MiB)."""
        out = self._out
        parts: list[memoryview] = []
        callbacks: list[_Callback] = []
        size = 0
        while out and not out[0][1] and size < 1 << 20:
            view, _, cb = out.pop(0)
            parts.append(view)
            size += len(view)
            if cb is not None:
                callbacks.append(cb)

        def done(error: BaseException | None) -> None:
            for cb in callbacks:
                cb(error)

        out.insert(0, (memoryview(b"".join(parts)), [], done if callbacks else None))

    def fail_writes(self, exc: BaseException) -> None:
        """Drop every queued write: close its descriptors, call its callback with `exc`."""
        for _, fds, callback in self._out:
            for fd in fds:
                os.close(fd)
            if callback is not None:
                self._loop.call_soon(self._guard(callback), exc)
        self._out.clear()
        if self._writing and self.sock.fileno() >= 0:
            self._want_writable(False)
        self._writing = False

    # --- reading ---------------------------------------------------------------------------

    def read_once(self) -> bool:
        """Read and hand on what is there; False when nothing could be read."""
        try:
            frames = read_frames(self.sock, self.reader)
        except (BlockingIOError, InterruptedError):
            return False
        except ChannelError as exc:
            self._on_broken(exc)
            return False
        if frames is None:
            self._on_eof()
            return False
        COUNTS.frames_received += len(frames)
        for kind, payload, fds in frames:
            self._on_frame(kind, payload, fds)
        return True

    def close(self) -> None:
        """Close our end (the worker sees the channel close) and what arrived unclaimed."""
        self.open = False
        if self.sock.fileno() >= 0:
            self._loop.remove_reader(self.sock.fileno())
            self._want_writable(False)
            self.sock.close()
        self.reader.close()
