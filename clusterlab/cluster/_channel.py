"""The private message channel between the primary and one worker.

A Unix stream socket pair carrying length-prefixed frames. Descriptors travel with
SCM_RIGHTS and are matched to frames in order (a frame header says how many it owns).
Internal cluster messages and user messages are different frame kinds, so a user message
can never be taken for an internal one, and pickle is only ever read from this channel.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import stat
import struct
from collections import deque
from typing import Any

import orjson

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
_RECV_SIZE = 256 * 1024
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


def send_some(sock: socket.socket, data: bytes | memoryview, fds: list[int]) -> int:
    """One send (a sendmsg carrying `fds` when there are any); the bytes sent."""
    if fds:
        return socket.send_fds(sock, [data], fds)
    return sock.send(data)


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
