"""The supervisor's policies: when to restart a worker (and when to give up), and how often
a worker must beat to count as alive."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class RestartPolicy:
    """When to restart a worker that exited unasked, and when to stop trying.

    `mode`: ``"never"``, ``"immediate"`` or ``"backoff"``. Backoff delay for a slot's n-th
    consecutive failure (n from 0): ``min(cap, base * factor**n)``, times ``uniform(0, 1)``
    when `jitter` (AWS's "full jitter": spreads restarts of many failing workers). `seed` makes
    the jitter reproducible. Intensity (all modes): more than `max_restarts` restarts within
    `within` seconds → give up (`max_restarts=None` never gives up). A worker that stays up
    `reset_after` seconds after it was ready resets its slot's attempt count (PM2 uses 30 s).
    """

    mode: Literal["never", "immediate", "backoff"] = "backoff"
    base: float = 0.1
    factor: float = 2.0
    cap: float = 10.0
    jitter: bool = True
    max_restarts: int | None = 5
    within: float = 10.0
    reset_after: float = 10.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("never", "immediate", "backoff"):
            raise ValueError(
                f"RestartPolicy.mode must be never, immediate or backoff, got {self.mode!r}"
            )
        for name in ("base", "cap", "within", "reset_after"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(
                    f"RestartPolicy.{name} must be a finite number >= 0, got {value!r}"
                )
        if not (
            isinstance(self.factor, int | float) and math.isfinite(self.factor) and self.factor >= 1
        ):
            raise ValueError(f"RestartPolicy.factor must be >= 1, got {self.factor!r}")
        if self.max_restarts is not None and (
            not isinstance(self.max_restarts, int) or self.max_restarts < 0
        ):
            raise ValueError(
                f"RestartPolicy.max_restarts must be an int >= 0 or None, got {self.max_restarts!r}"
            )

    @classmethod
    def never(cls) -> RestartPolicy:
        return cls(mode="never", max_restarts=None)

    @classmethod
    def immediate(cls, **kw: Any) -> RestartPolicy:
        return cls(mode="immediate", **kw)

    @classmethod
    def backoff(cls, **kw: Any) -> RestartPolicy:
        return cls(mode="backoff", **kw)

    def bound(self, attempt: int) -> float:
        """The largest delay for the `attempt`-th consecutive failure (0-based)."""
        if self.mode != "backoff":
            return 0.0
        try:
            return min(self.cap, self.base * self.factor**attempt)
        except OverflowError:
            return self.cap

    def delay(self, attempt: int, rng: random.Random) -> float:
        bound = self.bound(attempt)
        return rng.uniform(0.0, bound) if self.jitter and bound > 0 else bound


@dataclass(frozen=True)
class HeartbeatPolicy:
    """Workers beat every `interval` seconds; one silent for `timeout` seconds is killed.

    The timeout should be several intervals (default 4×) so that a GC pause or a slow request
    on a single-threaded server is not mistaken for a hang.
    """

    interval: float = 1.0
    timeout: float = 5.0

    def __post_init__(self) -> None:
        if not (self.interval > 0 and self.timeout > self.interval):
            raise ValueError(
                f"HeartbeatPolicy needs 0 < interval < timeout, got {self.interval!r}, {self.timeout!r}"
            )
