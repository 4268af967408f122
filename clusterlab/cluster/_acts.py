"""The cluster's internal messages ("acts") and what each must carry: checked before either side
acts on one, so a malformed frame is the sender's error and never an exception in the receiver.
Each side keeps one table from act to (check, handler): `Primary` and `ChildRuntime`.
"""

from __future__ import annotations

from typing import Any

from ._channel import ChannelError
from ._endpoint import Endpoint

Message = dict[str, Any]

_ADDRESS_TYPES = (4, 6, -1, "udp4", "udp6")


def _need(message: Message, name: str, *types: type, optional: bool = False) -> Any:
    value = message.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, types) or isinstance(value, bool):
        raise ChannelError(
            f"invalid internal message {message['act']!r}: field {name!r} is {value!r}"
        )
    return value


def no_fields(message: Message) -> Message:
    """An act that carries nothing but itself (and maybe a request's seq)."""
    return message


def query_server(message: Message) -> Message:
    """W→P `queryServer`: the worker's Nth listen on an endpoint; `endpoint` parsed."""
    _need(message, "index", int)
    try:
        return {**message, "endpoint": Endpoint.from_message(message)}
    except ValueError as exc:
        raise ChannelError(str(exc)) from None


def listening(message: Message) -> Message:
    """W→P `listening`: where one of the worker's listeners is bound."""
    _need(message, "port", int)
    _need(message, "address", str, optional=True)
    _need(message, "fd", int, optional=True)
    if message.get("address_type") not in _ADDRESS_TYPES:
        raise ChannelError(
            f"invalid internal message 'listening': address_type {message.get('address_type')!r}"
        )
    return message


def close(message: Message) -> Message:
    """W→P `close`: the worker closed its listener on handle `key`."""
    _need(message, "key", str)
    return message


def ack(message: Message) -> Message:
    """P→W `ack`: the answer to the worker's request `seq`."""
    _need(message, "seq", int, optional=True)
    return message
