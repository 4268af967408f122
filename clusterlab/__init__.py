"""clusterlab: Node.js's `cluster` module in Python, and a lab that measures clusters."""

from __future__ import annotations

from . import cluster
from ._parallelism import available_parallelism

__all__ = ["cluster", "available_parallelism"]
__version__ = "0.1.0"
