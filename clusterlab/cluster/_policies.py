"""The built-in schedulers, and turning what a user names (name, class, instance, "module:Name")
into a scheduling policy: the table the primary chooses handles from.
"""

from __future__ import annotations

import functools
import importlib
import math
import random as random_mod
import sys
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._scheduler import Scheduler, WorkerState, scheduler_name

SCHED_NONE = 1
SCHED_RR = 2
SCHED_REUSEPORT = 3


class RoundRobin(Scheduler):
    """Node's SCHED_RR: the next worker in turn (the handle runs it inline, without `pick`)."""

    name = "rr"

    def __init__(self) -> None:
        self._turn = 0

    def pick(self, workers: Sequence[WorkerState], client: Any) -> WorkerState | None:
        self._turn += 1
        return workers[self._turn % len(workers)]


class _InTurn(Scheduler):
    """A scheduler that breaks ties in turn: each pick looks at the workers from one further on
    (one pass over them, no list built: `pick` is on every connection's path)."""

    def __init__(self) -> None:
        self._turn = 0

    def _start(self, n: int) -> int:
        """Where this pick starts looking (the turn moves on by one per pick)."""
        start = self._turn % n
        self._turn = start + 1
        return start


class LeastConnections(_InTurn):
    """The worker with the fewest open connections; ties in turn (NGINX `least_conn`)."""

    name = "least-conn"

    def pick(self, workers: Sequence[WorkerState], client: Any) -> WorkerState | None:
        n = len(workers)
        i = self._start(n)
        best = workers[i]
        fewest = best.open
        for _ in range(n - 1):
            i = i + 1 if i + 1 < n else 0
            worker = workers[i]
            opened = worker.open
            if opened < fewest:
                best, fewest = worker, opened
        return best


class TwoChoices(Scheduler):
    """Two workers at random, the one with fewer requests in flight, else fewer open
    connections (the power of two choices; Envoy's LEAST_REQUEST, NGINX `random two`)."""

    name = "p2c"

    def __init__(self) -> None:
        self._random = random_mod.Random()

    def pick(self, workers: Sequence[WorkerState], client: Any) -> WorkerState | None:
        n = len(workers)
        if n == 1:
            return workers[0]
        draw = self._random.random
        i = int(draw() * n)
        j = int(draw() * (n - 1))
        a, b = workers[i], workers[j + 1 if j >= i else j]
        a_busy, b_busy = a.in_flight, b.in_flight
        if a_busy is not None and b_busy is not None and a_busy != b_busy:
            return a if a_busy < b_busy else b
        return a if a.open <= b.open else b


class JoinIdleQueue(_InTurn):
    """A worker with nothing in flight, else one with no open connection, else the least
    loaded; idle ones in turn (join-idle-queue, Lu et al. 2011, with the primary's view)."""

    name = "jiq"

    def pick(self, workers: Sequence[WorkerState], client: Any) -> WorkerState | None:
        n = len(workers)
        i = self._start(n)
        unconnected: WorkerState | None = None  # the first with no open connection
        least: WorkerState | None = None  # the least loaded: fewest in flight, then open
        least_busy = least_open = 0
        for _ in range(n):
            worker = workers[i]
            i = i + 1 if i + 1 < n else 0
            busy = worker.in_flight
            if busy == 0 and worker.pending == 0:
                return worker
            opened = worker.open
            if opened == 0 and unconnected is None:
                unconnected = worker
            if busy is None:
                busy = opened
            if least is None or busy < least_busy or (busy == least_busy and opened < least_open):
                least, least_busy, least_open = worker, busy, opened
        return unconnected if unconnected is not None else least


# Rendezvous scores: a client's score for a worker is its 64-bit key times the worker's odd
# 64-bit salt, modulo 2**64, the highest winning: one multiplication per worker and connection.
# With a well-mixed key the scores of one client for different workers are as good as
# independent: each of 2 to 16 workers got its share of 20,000 addresses within 2.2 standard
# deviations, and the second choice within 2.8 (what a leaving or full worker's clients get).
# Python's tuple `hash` of (address, worker id), used before, gave 4 workers 19, 24, 27 and
# 30 % of them, whatever the seed.
_MASK64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    """MurmurHash3's 64-bit finalizer: every input bit flips every output bit with probability
    about one half."""
    x ^= x >> 33
    x = (x * 0xFF51AFD7ED558CCD) & _MASK64
    x ^= x >> 33
    x = (x * 0xC4CEB9FE1A85EC53) & _MASK64
    return x ^ (x >> 33)


def client_key(client: Any) -> int:
    """A client's 64-bit key: its host (the peer address without its port; a Unix socket's
    peer is ``""``) through two CRC-32s and `_mix64`. The same in every process and run,
    unlike Python's salted `hash`. The last 65,536 hosts' keys are kept: a returning client
    costs a look-up instead of ≈ 0.7 µs of arithmetic."""
    host = client[0] if isinstance(client, tuple) else client
    return _host_key(str(host))


@functools.lru_cache(maxsize=1 << 16)
def _host_key(host: str) -> int:
    data = host.encode()
    return _mix64((zlib.crc32(data) << 32) | zlib.crc32(data, 0x5BD1E995))


def worker_salt(worker_id: int) -> int:
    """A worker's odd 64-bit multiplier (computed once, when it joins)."""
    return _mix64(worker_id & _MASK64) | 1


class RendezvousHash(Scheduler):
    """Sticky by client address: highest-random-weight (rendezvous) hashing over the workers of
    the endpoint, so a worker that leaves moves only its own clients. A client whose worker's
    window is full waits for it, in that worker's own queue (the others are served meanwhile).

    ``balance`` (None: strictly sticky) bounds the load, as consistent hashing with bounded
    loads (Mirrokni, Thorup and Zadimoghaddam; HAProxy's ``hash-balance-factor``, Envoy's
    ``hash_balance_factor``): a client whose worker's load is at ``ceil(balance × (total + 1)
    / workers)`` or above goes to the next worker in its rendezvous order below it. A
    worker's load is its open connections plus those waiting for it.
    """

    name = "hash"
    keys_on_client = True
    #: None: strictly sticky; a number above 1: the bound on a worker's load over the mean.
    balance: float | None = None

    def __init__(self, balance: float | None = None) -> None:
        if balance is not None:
            if isinstance(balance, bool) or not isinstance(balance, (int, float)):
                raise TypeError(f"balance must be a number above 1 or None, got {balance!r}")
            if not 1 < balance < math.inf:
                raise ValueError(f"balance must be above 1 (and finite), got {balance!r}")
            self.balance = float(balance)
        self._members: list[tuple[WorkerState, int]] = []  # (worker, its salt)

    def join(self, worker: WorkerState) -> None:
        self._members.append((worker, worker_salt(worker.id)))

    def leave(self, worker: WorkerState) -> None:
        self._members = [member for member in self._members if member[0] is not worker]

    def pick(self, workers: Sequence[WorkerState], client: Any) -> WorkerState | None:
        key = client_key(client)
        endpoint = workers[0].key
        chosen = self._choose(key, self._members, endpoint)
        if chosen is None:  # none joined through this instance (a subclass's own `join`)
            members = [(worker, worker_salt(worker.id)) for worker in workers]
            chosen = self._choose(key, members, endpoint)
        return chosen

    def _choose(
        self, key: int, members: list[tuple[WorkerState, int]], endpoint: str
    ) -> WorkerState | None:
        """The highest-scoring member of `endpoint` (bounded: the first below the bound, in
        one pass unless the first choice is at it); None when none is of `endpoint`."""
        total = count = 0
        best: WorkerState | None = None
        best_score = best_load = -1
        bounded = self.balance is not None
        for worker, salt in members:
            if worker.key != endpoint:
                continue
            count += 1
            score = (key * salt) & _MASK64
            load = worker.open + worker.queued if bounded else 0
            total += load
            if score > best_score:
                best, best_score, best_load = worker, score, load
        if best is None or self.balance is None:
            return best
        bound = math.ceil(self.balance * (total + 1) / count)
        if best_load < bound:
            return best
        ranked = sorted(
            (member for member in members if member[0].key == endpoint),
            key=lambda member: (key * member[1]) & _MASK64,
            reverse=True,
        )
        for worker, _ in ranked[1:]:
            if worker.open + worker.queued < bound:
                return worker
        return best


class BoundedHash(RendezvousHash):
    """`hash` with bounded loads (``balance`` 1.25): sticky while the client's worker carries
    less than 1.25 × the mean load, else the next worker in the client's order."""

    name = "hash-bounded"
    balance = 1.25


class Weighted(Scheduler):
    """Smooth weighted round robin (NGINX's): each worker gets `weight` connections in every
    sum-of-weights, spread out; `cluster.fork(weight=N)` sets the weights."""

    name = "weighted"

    def __init__(self) -> None:
        self._current: dict[WorkerState, int] = {}

    def leave(self, worker: WorkerState) -> None:
        self._current.pop(worker, None)

    def pick(self, workers: Sequence[WorkerState], client: Any) -> WorkerState | None:
        current = self._current
        total = 0
        best: WorkerState | None = None
        best_score = 0
        for worker in workers:
            weight = worker.weight
            total += weight
            score = current.get(worker, 0) + weight
            current[worker] = score
            if best is None or score > best_score:
                best, best_score = worker, score
        assert best is not None
        current[best] = best_score - total
        return best


class Random(Scheduler):
    """A worker at random."""

    name = "random"

    def __init__(self) -> None:
        self._random = random_mod.Random()

    def pick(self, workers: Sequence[WorkerState], client: Any) -> WorkerState | None:
        return self._random.choice(workers)


BUILTIN: Mapping[str, type[Scheduler]] = {
    cls.name: cls
    for cls in (RoundRobin, LeastConnections, TwoChoices, JoinIdleQueue, RendezvousHash)
    + (BoundedHash, Weighted, Random)
}
_KERNEL = {"none": SCHED_NONE, "reuseport": SCHED_REUSEPORT}
_CONSTANTS = {SCHED_NONE: "none", SCHED_RR: "rr", SCHED_REUSEPORT: "reuseport"}
#: The built-in names whose scheduler keys on the client's address.
CLIENT_KEYED = frozenset(name for name, cls in BUILTIN.items() if cls.keys_on_client)
NAMES = ("rr", "none", "reuseport", *(name for name in BUILTIN if name != "rr"))


@dataclass(frozen=True)
class Policy:
    """A chosen policy: SCHED_NONE/SCHED_REUSEPORT, or primary-distributed with a scheduler.

    `scheduler` is a class (one instance per endpoint) or an instance (shared); None under
    the kernel policies.
    """

    mode: int
    scheduler: type[Scheduler] | Scheduler | None = None

    @property
    def name(self) -> str:
        if self.scheduler is None:
            return _CONSTANTS[self.mode]
        return scheduler_name(self.scheduler)

    @property
    def public(self) -> int | str:
        """What `cluster.scheduling_policy` returns: Node's constants, else the name."""
        if self.scheduler is None or self.scheduler is RoundRobin:
            return self.mode
        return self.name

    def new_scheduler(self) -> Scheduler | None:
        """The scheduler for a new handle; None for Node's round robin (run inline)."""
        scheduler = self.scheduler
        if scheduler is None or scheduler is RoundRobin:
            return None
        return scheduler() if isinstance(scheduler, type) else scheduler


DEFAULT = Policy(SCHED_RR, RoundRobin)


def resolve(value: Any) -> Policy:
    """The policy `value` names; ValueError listing the valid names (TypeError for a wrong type,
    ImportError naming a "module:Name" that does not import)."""
    if isinstance(value, Policy):
        return value
    if isinstance(value, bool):
        raise TypeError(f"a scheduling policy cannot be {value!r}")
    if isinstance(value, int):
        if value == SCHED_RR:
            return DEFAULT
        if value in (SCHED_NONE, SCHED_REUSEPORT):
            return Policy(value)
        raise ValueError(
            f"scheduling_policy must be SCHED_RR, SCHED_NONE, SCHED_REUSEPORT or one of "
            f"{', '.join(NAMES)}, got {value!r}"
        )
    if isinstance(value, type) and issubclass(value, Scheduler):
        return Policy(SCHED_RR, value)
    if isinstance(value, Scheduler):
        return Policy(SCHED_RR, value)
    if isinstance(value, str):
        return _from_name(value)
    raise TypeError(
        f"a scheduler must be a name ({', '.join(NAMES)}), a Scheduler subclass or instance, "
        f"or 'module:Name', got {value!r}"
    )


def _from_name(value: str) -> Policy:
    name = value.strip()
    if ":" in name:
        return Policy(SCHED_RR, _import(name))
    name = name.lower()
    if name in _KERNEL:
        return Policy(_KERNEL[name])
    if name in BUILTIN:
        return DEFAULT if name == "rr" else Policy(SCHED_RR, BUILTIN[name])
    raise ValueError(
        f"unknown scheduling policy {value!r}: expected one of {', '.join(NAMES)}, "
        "a Scheduler subclass or instance, or 'module:Name'"
    )


def _import(spec: str) -> type[Scheduler] | Scheduler:
    module_name, _, attr = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise ImportError(f"scheduler {spec!r} does not import: {exc}") from exc
    if (isinstance(target, type) and issubclass(target, Scheduler)) or isinstance(
        target, Scheduler
    ):
        return target
    raise TypeError(f"scheduler {spec!r} is {target!r}, not a Scheduler subclass or instance")


def from_env(environ: Mapping[str, str]) -> Policy:
    """CLUSTERLAB_SCHED_POLICY's policy; an unknown value warns and is ignored (as Node's)."""
    raw = environ.get("CLUSTERLAB_SCHED_POLICY")
    if raw is None or raw == "":
        return DEFAULT
    try:
        return resolve(raw)
    except (ValueError, TypeError, ImportError) as exc:
        print(f"clusterlab: ignoring CLUSTERLAB_SCHED_POLICY={raw!r} ({exc})", file=sys.stderr)
        return DEFAULT
