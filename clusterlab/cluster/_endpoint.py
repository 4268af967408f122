"""Endpoints: what a worker asks to listen on, how it is keyed, and how sockets are bound.

Keys follow Node: (address, port, address type, path) plus the worker's Nth listen on that key,
so every worker's Nth `listen(port=0)` shares one port.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any, NamedTuple


class Address(NamedTuple):
    """Where a worker listens, as reported with `'listening'`.

    address_type is 4, 6, -1 (Unix socket path), 'udp4' or 'udp6'.
    """

    address: str | None
    port: int
    address_type: int | str
    fd: int | None = None


@dataclass(frozen=True)
class Endpoint:
    """A resolved listen request: numeric address, family and the options that matter."""

    address: str | None  # as the user gave it (None for "all interfaces"); path for Unix
    bind_host: str  # numeric host to bind ("" for Unix)
    port: int
    family: int
    address_type: int | str
    path: str | None = None
    backlog: int = 511
    ipv6_only: bool = False
    reuse_addr: bool = False  # UDP: SO_REUSEADDR (Node's dgram reuseAddr); TCP always has it

    @property
    def udp(self) -> bool:
        return isinstance(self.address_type, str)

    @property
    def base_key(self) -> str:
        return f"{self.address}:{self.port}:{self.address_type}:{self.path}"

    def to_message(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "bind_host": self.bind_host,
            "port": self.port,
            "family": int(self.family),
            "address_type": self.address_type,
            "path": self.path,
            "backlog": self.backlog,
            "ipv6_only": self.ipv6_only,
            "reuse_addr": self.reuse_addr,
        }

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> Endpoint:
        try:
            endpoint = cls(
                address=message["address"],
                bind_host=str(message["bind_host"]),
                port=int(message["port"]),
                family=int(message["family"]),
                address_type=message["address_type"],
                path=message["path"],
                backlog=int(message["backlog"]),
                ipv6_only=bool(message["ipv6_only"]),
                reuse_addr=bool(message.get("reuse_addr", False)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed endpoint in queryServer: {exc!r}") from None
        if endpoint.family not in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX):
            raise ValueError(f"malformed endpoint in queryServer: family {endpoint.family}")
        if not 0 <= endpoint.port <= 65535 and not (
            endpoint.family == socket.AF_UNIX and endpoint.port == -1
        ):
            raise ValueError(f"malformed endpoint in queryServer: port {endpoint.port}")
        return endpoint

    def describe(self) -> str:
        if self.path is not None:
            return self.path
        host = self.bind_host if self.family != socket.AF_INET6 else f"[{self.bind_host}]"
        return f"{'udp ' if self.udp else ''}{host}:{self.port}"

    def report(self, port: int) -> Address:
        if self.path is not None:
            return Address(self.path, -1, -1, None)
        return Address(self.address, port, self.address_type, None)


def resolve(
    port: int = 0,
    host: str | None = None,
    *,
    backlog: int = 511,
    path: str | os.PathLike[str] | None = None,
    udp: bool = False,
    ipv6_only: bool = False,
    reuse_addr: bool = False,
) -> Endpoint:
    """Check listen arguments and resolve the host to a numeric address."""
    if isinstance(backlog, bool) or not isinstance(backlog, int) or backlog < 0:
        raise ValueError(f"backlog must be a non-negative int, got {backlog!r}")
    if reuse_addr and not udp:
        raise ValueError("reuse_addr=True is for udp=True (stream sockets always reuse addresses)")
    if path is not None:
        if udp:
            raise ValueError("udp=True cannot be combined with path=")
        path = os.path.abspath(os.fspath(path))
        return Endpoint(path, "", -1, socket.AF_UNIX, -1, path=path, backlog=backlog)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an int in 0..65535, got {port!r}")
    if host is not None and not isinstance(host, str):
        raise TypeError(f"host must be a str or None, got {host!r}")
    kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
    if not host:
        family, bind_host, address = socket.AF_INET, "0.0.0.0", None
    else:
        infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, kind, 0, socket.AI_PASSIVE)
        family, _, _, _, sockaddr = infos[0]
        bind_host, address = str(sockaddr[0]), host
    v = 6 if family == socket.AF_INET6 else 4
    address_type: int | str = f"udp{v}" if udp else v
    return Endpoint(
        address, bind_host, port, family, address_type, None, backlog, ipv6_only, reuse_addr
    )


def bind(endpoint: Endpoint, *, reuseport: bool = False, listen: bool = True) -> socket.socket:
    """Create and bind a socket for `endpoint` (and listen, for stream sockets)."""
    kind = socket.SOCK_DGRAM if endpoint.udp else socket.SOCK_STREAM
    sock = socket.socket(endpoint.family, kind)
    try:
        if endpoint.family == socket.AF_UNIX:
            assert endpoint.path is not None
            sock.bind(_short_path(endpoint.path))
        else:
            if not endpoint.udp or endpoint.reuse_addr:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuseport:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if endpoint.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(endpoint.ipv6_only))
            sock.bind((endpoint.bind_host, endpoint.port))
        if listen and not endpoint.udp:
            sock.listen(endpoint.backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def _short_path(path: str) -> str:
    """Unix socket paths are limited to ~107 bytes: use the relative form when shorter."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return rel if len(rel) < len(path) else path


def bound_port(sock: socket.socket) -> int:
    name = sock.getsockname()
    return int(name[1]) if isinstance(name, tuple) else -1
