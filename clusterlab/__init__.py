"""clusterlab: Node.js's `cluster` module in Python, and a lab that measures clusters."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from ._parallelism import available_parallelism

if TYPE_CHECKING:
    from . import cluster

__all__ = ["cluster", "available_parallelism"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # `cluster` is imported on first use, so that importing a light part of the package (the
    # pytest plugin, `clusterlab.lab`) does not pay for the cluster's asyncio and sockets.
    if name == "cluster":
        return import_module("clusterlab.cluster")
    raise AttributeError(f"module 'clusterlab' has no attribute {name!r}")
