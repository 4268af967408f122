"""The supervisor, primary side: N slots kept filled, exits classified, restarts scheduled
on the cluster's loop, the watchdog (boot timeout, heartbeats), rolling restart and shutdown."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .. import cluster
from ..cluster import EventEmitter, Worker
from ..cluster._counts import watch_supervisor
from ._policy import HeartbeatPolicy, RestartPolicy
from ._worker import CONTROL_KEY, ENV_HEARTBEAT, ENV_SLOT, is_control_message

log = logging.getLogger("clusterlab.supervisor")

ExitKind = Literal["clean", "crash", "boot_failure", "hang", "killed"]
"""How a supervised worker ended.

* ``boot_failure``: exited (or was killed at its `boot_timeout`) before it was ready;
* ``crash``: exited after it was ready with a non-zero status or a signal, unasked;
* ``hang``: killed by the supervisor because its heartbeat stopped;
* ``killed``: asked to leave (rolling restart, shutdown) and SIGKILLed after the grace period;
* ``clean``: exit status 0, or left after a disconnect.
"""


# ------------------------------------------------------------------------------------------
# Records and events
# ------------------------------------------------------------------------------------------


@dataclass(eq=False)
class SupervisedWorker:
    """One worker the supervisor started: which slot it fills and how far it got."""

    slot: int
    worker: Worker
    spawned_at: float
    ready_at: float | None = None
    last_beat: float | None = None
    exited_at: float | None = None
    exit_kind: ExitKind | None = None
    retiring: bool = False
    kill_reason: str | None = None
    predecessor: SupervisedWorker | None = None
    _waiters: list[asyncio.Future[bool]] = field(default_factory=list, repr=False)

    @property
    def id(self) -> int:
        return self.worker.id

    @property
    def pid(self) -> int:
        return int(self.worker.process.pid)

    @property
    def ready(self) -> bool:
        return self.ready_at is not None

    @property
    def alive(self) -> bool:
        return self.exited_at is None

    def _settle(self, value: bool) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(value)


@dataclass(frozen=True)
class RestartLimit:
    """What `'restart_limit'` carries: the limit and what led to it."""

    max_restarts: int
    within: float
    restarts_in_window: int
    slot: int
    last_exit: ExitKind
    boot_failures: int
    crashes: int
    hangs: int

    def message(self) -> str:
        return (
            f"clusterlab supervisor: restart limit reached ({self.restarts_in_window} restarts "
            f"within {self.within:g}s, limit {self.max_restarts}); last exit: {self.last_exit} "
            f"in slot {self.slot}; totals: {self.boot_failures} boot failures, {self.crashes} "
            f"crashes, {self.hangs} hangs; not restarting any more"
        )


# ------------------------------------------------------------------------------------------
# The supervisor (primary side)
# ------------------------------------------------------------------------------------------

State = Literal["new", "running", "stopping", "stopped"]


class Supervisor(EventEmitter):
    """Keeps `workers` cluster workers alive in the primary.

    Events (listener arguments):

    * ``'spawn'(sw)``: a worker was forked for slot ``sw.slot``;
    * ``'ready'(sw, boot_seconds)``: it became ready (see `ready`);
    * ``'exit'(sw, kind, code, signal)``: it exited; `kind` is an `ExitKind`;
    * ``'restart_scheduled'(slot, delay, attempt, kind)``: a restart will fork in `delay` s;
    * ``'restart_limit'(RestartLimit)``: the intensity was exceeded; no more restarts;
    * ``'restart_refused'(slot, kind)``: an exit that is not restarted because of the limit
      (the one that reached it, and with ``on_limit="keep"`` every later one; `stats["refused"]`
      counts them);
    * ``'hang_detected'(sw, silent_seconds)``: heartbeat timeout; it is being SIGKILLed;
    * ``'rolled'(count)``: a rolling restart replaced `count` workers;
    * ``'stopped'(status)``: every worker is gone; `status` 0, or 1 after the restart limit.

    `ready`: when a worker counts as booted: ``"listening"`` (its first listener, default),
    ``"online"``, or ``"message"`` (it calls `clusterlab.supervisor.ready()`). A worker not
    ready within `boot_timeout` seconds is killed and counted as a boot failure.
    `on_limit`: ``"stop"`` (OTP: shut the remaining workers down gracefully and end with status
    1, so the primary's own supervisor — systemd, Kubernetes — takes over) or ``"keep"`` (keep
    the survivors serving, just stop restarting). `env`: extra environment for each worker, a
    mapping or a function of the slot. Exits after a disconnect that the supervisor did not ask
    for (the cluster's own SIGINT/SIGTERM shutdown, `worker.disconnect()` by the application)
    are not restarted; any other exit is, exit status 0 included.
    """

    def __init__(
        self,
        workers: int = 1,
        restart: RestartPolicy | None = None,
        heartbeat: HeartbeatPolicy | None = None,
        grace: float = 10.0,
        *,
        ready: Literal["listening", "online", "message"] = "listening",
        boot_timeout: float | None = 30.0,
        on_limit: Literal["stop", "keep"] = "stop",
        env: Mapping[str, Any] | Callable[[int], Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an int >= 1, got {workers!r}")
        if ready not in ("listening", "online", "message"):
            raise ValueError(f"ready must be listening, online or message, got {ready!r}")
        if on_limit not in ("stop", "keep"):
            raise ValueError(f"on_limit must be stop or keep, got {on_limit!r}")
        if not grace >= 0:
            raise ValueError(f"grace must be >= 0, got {grace!r}")
        self.size = workers
        self.restart = restart or RestartPolicy()
        self.heartbeat = heartbeat
        self.grace = float(grace)
        self.ready_on = ready
        self.boot_timeout = boot_timeout
        self.on_limit = on_limit
        self.env = env
        self.state: State = "new"
        self.gave_up = False
        self.status: int | None = None
        self.stats: dict[str, int] = dict.fromkeys(
            ("spawns", "restarts", "clean", "crash", "boot_failure", "hang", "killed", "refused"), 0
        )
        self._rng = random.Random(self.restart.seed)
        self._slots: dict[int, SupervisedWorker | None] = {}
        self._live: dict[int, SupervisedWorker] = {}  # by worker id, predecessors included
        self._attempts: dict[int, int] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._restart_times: deque[float] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._done: asyncio.Future[int] | None = None
        self._rolling: asyncio.Task[bool] | None = None
        self._holding_loop = False  # a cluster.ref() to undo when stopped

    # --- public API ------------------------------------------------------------------------

    @property
    def workers(self) -> list[SupervisedWorker]:
        """The current occupant of each slot (workers being replaced are not listed)."""
        return [sw for _, sw in sorted(self._slots.items()) if sw is not None]

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop the supervisor runs on, once known (for `call_soon_threadsafe`)."""
        return self._loop

    def start(self) -> Supervisor:
        """Fork the workers. From asyncio code they are supervised on the running loop;
        otherwise on the cluster's own loop, which runs when the main script ends (or in
        `run()`)."""
        if not cluster.is_primary:
            raise RuntimeError("a Supervisor runs in the primary")
        if self.state != "new":
            raise RuntimeError("this Supervisor was already started")
        self.state = "running"
        watch_supervisor(self.stats)  # its restarts, refusals and hangs on /metrics
        self._bind_running_loop()
        # Until stopped, the cluster's loop keeps running while a restart waits with no worker
        # alive (a plain script's loop runs when the main script ends, or in run()).
        cluster.ref()
        self._holding_loop = True
        for slot in range(self.size):
            self._attempts[slot] = 0
            self._spawn(slot)
        return self

    async def serve(self) -> int:
        """asyncio: start (if not yet) and wait until stopped; the status (0, or 1 after the
        restart limit)."""
        if self.state == "new":
            self.start()
        done = self._done_future()
        try:
            return await asyncio.shield(done)
        except asyncio.CancelledError:
            # asyncio.run() cancels the main task on Ctrl-C: take the workers down gracefully
            # (a second Ctrl-C cancels this wait too, and the cluster closes the channels).
            self._begin_stop(self.grace, 130)
            await asyncio.shield(done)
            raise

    def wait(self) -> asyncio.Future[int]:
        """An awaitable for the final status (on the running loop)."""
        return self._done_future()

    def run(self) -> int:
        """Blocking: start (if not yet) and supervise until stopped; returns the status.

        For scripts that are not asyncio code: the cluster's own loop runs here, until the
        supervisor has stopped.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError(
                "Supervisor.run() blocks: in asyncio code, use `await supervisor.serve()`"
            )
        if self.state == "new":
            self.start()
        cluster.run()
        return self.status if self.status is not None else 0

    def stop(self, grace: float | None = None) -> asyncio.Future[int]:
        """Graceful shutdown: no more restarts, every worker told to disconnect, SIGKILLed
        after `grace` seconds (default: the supervisor's). Call it on the loop (a listener,
        asyncio code); await the result for the final status."""
        self._bind_running_loop(required=True)
        self._begin_stop(self.grace if grace is None else grace, 0)
        return self._done_future()

    def rolling_restart(self) -> asyncio.Task[bool]:
        """Replace every worker, one slot at a time: the replacement is ready before its
        predecessor is told to disconnect (graceful), so no request is refused. Call it on the
        loop; the task's result is False when a replacement failed to boot (the roll stops
        there and the predecessor keeps serving)."""
        loop = self._bind_running_loop(required=True)
        if self._rolling is not None and not self._rolling.done():
            return self._rolling
        self._rolling = loop.create_task(self._roll())
        return self._rolling

    # --- loop binding ----------------------------------------------------------------------

    def _bind_running_loop(self, required: bool = False) -> asyncio.AbstractEventLoop:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            if required and self._loop is None:
                raise RuntimeError(
                    "call this on the supervisor's loop (from a listener or asyncio code)"
                ) from None
            return self._loop  # type: ignore[return-value]
        if self._loop is None:
            self._loop = loop
        return self._loop

    def _done_future(self) -> asyncio.Future[int]:
        loop = self._bind_running_loop(required=True)
        if self._done is None:
            self._done = loop.create_future()
            if self.status is not None:
                self._done.set_result(self.status)
        return self._done

    def _call_later(
        self, delay: float, fn: Callable[..., Any], *args: Any
    ) -> asyncio.TimerHandle | None:
        loop = self._bind_running_loop()
        if loop is None:
            return None
        return loop.call_later(delay, fn, *args)

    # --- spawning --------------------------------------------------------------------------

    def _spawn(self, slot: int, predecessor: SupervisedWorker | None = None) -> SupervisedWorker:
        env: dict[str, Any] = {}
        if self.env is not None:
            env.update(self.env(slot) if callable(self.env) else self.env)
        env[ENV_SLOT] = str(slot)
        if self.heartbeat is not None:
            env[ENV_HEARTBEAT] = repr(self.heartbeat.interval)
        worker = cluster.fork(env)
        sw = SupervisedWorker(
            slot=slot, worker=worker, spawned_at=time.monotonic(), predecessor=predecessor
        )
        self._slots[slot] = sw
        self._live[worker.id] = sw
        self.stats["spawns"] += 1
        worker.on("online", lambda: self._on_online(sw))
        worker.on("listening", lambda address: self._on_listening(sw))
        worker.on("message", lambda message, handle: self._on_message(sw, message))
        worker.on("exit", lambda code, sig: self._on_exit(sw, code, sig))
        log.info("spawned worker %d (pid %d) in slot %d", worker.id, sw.pid, slot)
        self.emit("spawn", sw)
        self._arm_watchdog()
        return sw

    # --- worker events ---------------------------------------------------------------------

    def _on_online(self, sw: SupervisedWorker) -> None:
        self._bind_running_loop()
        self._arm_watchdog()
        if self.ready_on == "online":
            self._mark_ready(sw)

    def _on_listening(self, sw: SupervisedWorker) -> None:
        if self.ready_on == "listening":
            self._mark_ready(sw)

    def _on_message(self, sw: SupervisedWorker, message: Any) -> None:
        if not is_control_message(message):
            return
        what = message[CONTROL_KEY]
        if what == "heartbeat":
            sw.last_beat = time.monotonic()
        elif what == "ready" and self.ready_on == "message":
            self._mark_ready(sw)

    def _mark_ready(self, sw: SupervisedWorker) -> None:
        if sw.ready_at is not None or not sw.alive:
            return
        now = time.monotonic()
        sw.ready_at = now
        if sw.last_beat is None:
            sw.last_beat = now
        log.info("worker %d ready in %.3fs", sw.id, now - sw.spawned_at)
        self.emit("ready", sw, now - sw.spawned_at)
        sw._settle(True)

    def _classify(self, sw: SupervisedWorker, code: int | None, sig: str | None) -> ExitKind:
        if sw.kill_reason == "hang":
            return "hang"
        if sw.retiring:
            return "killed" if sw.kill_reason == "grace" else "clean"
        if sw.ready_at is None:
            return "boot_failure"
        if sw.worker.exited_after_disconnect or (code == 0 and sig is None):
            return "clean"
        return "crash"

    def _on_exit(self, sw: SupervisedWorker, code: int | None, sig: str | None) -> None:
        self._bind_running_loop()
        now = time.monotonic()
        sw.exited_at = now
        kind = self._classify(sw, code, sig)
        sw.exit_kind = kind
        self.stats[kind] += 1
        self._live.pop(sw.id, None)
        occupant = self._slots.get(sw.slot) is sw
        # INFO: with logging unconfigured only the kills and the restart limit are printed.
        log.info(
            "worker %d (pid %d, slot %d) exited: %s (code=%s, signal=%s)",
            sw.id,
            sw.pid,
            sw.slot,
            kind,
            code,
            sig,
        )
        self.emit("exit", sw, kind, code, sig)
        sw._settle(False)
        if occupant:
            self._slots[sw.slot] = None
            pred = sw.predecessor
            if pred is not None and pred.alive and sw.ready_at is None:
                # A replacement of a rolling restart failed to boot: its predecessor stays.
                self._slots[sw.slot] = pred
                pred.retiring = False
            elif (
                self.state == "running"
                and not sw.retiring
                and not (sw.worker.exited_after_disconnect and kind == "clean")
            ):
                self._schedule_restart(sw, kind, now)
        self._check_done()

    # --- restarts --------------------------------------------------------------------------

    def _schedule_restart(self, sw: SupervisedWorker, kind: ExitKind, now: float) -> None:
        policy = self.restart
        slot = sw.slot
        if policy.mode == "never":
            if self.gave_up:  # on_limit="keep": every later exit is a refused restart too
                self._refuse(slot, kind)
            return
        if sw.ready_at is not None and now - sw.ready_at >= policy.reset_after:
            self._attempts[slot] = 0
        window = self._restart_times
        while window and window[0] <= now - policy.within:
            window.popleft()
        if policy.max_restarts is not None and len(window) >= policy.max_restarts:
            self._give_up(slot, kind, len(window))
            return
        window.append(now)
        attempt = self._attempts.get(slot, 0)
        failure = kind in ("crash", "boot_failure", "hang", "killed")
        delay = policy.delay(attempt, self._rng) if policy.mode == "backoff" else 0.0
        if failure:
            self._attempts[slot] = attempt + 1
        self.stats["restarts"] += 1
        log.info("restarting slot %d in %.3fs (attempt %d, after %s)", slot, delay, attempt, kind)
        self.emit("restart_scheduled", slot, delay, attempt, kind)
        handle = self._call_later(delay, self._restart_slot, slot)
        if handle is not None:
            self._timers[slot] = handle
        else:  # no loop known (cannot happen from an 'exit' listener); restart now
            self._restart_slot(slot)

    def _restart_slot(self, slot: int) -> None:
        self._timers.pop(slot, None)
        if self.state != "running" or self._slots.get(slot) is not None:
            return
        self._spawn(slot)

    def _refuse(self, slot: int, kind: ExitKind) -> None:
        self.stats["refused"] += 1
        self.emit("restart_refused", slot, kind)

    def _give_up(self, slot: int, kind: ExitKind, in_window: int) -> None:
        self._refuse(slot, kind)
        if self.gave_up:
            return
        self.gave_up = True
        assert self.restart.max_restarts is not None
        limit = RestartLimit(
            max_restarts=self.restart.max_restarts,
            within=self.restart.within,
            restarts_in_window=in_window,
            slot=slot,
            last_exit=kind,
            boot_failures=self.stats["boot_failure"],
            crashes=self.stats["crash"],
            hangs=self.stats["hang"],
        )
        log.error("%s", limit.message())
        self.emit("restart_limit", limit)
        if self.on_limit == "stop":
            self._begin_stop(self.grace, 1)
        else:
            # Keep the survivors; no slot is restarted any more.
            for handle in self._timers.values():
                handle.cancel()
            self._timers.clear()
            self.restart = RestartPolicy.never()

    # --- watchdog: boot timeout and heartbeats ---------------------------------------------

    def _watch_interval(self) -> float:
        candidates = [1.0]
        if self.heartbeat is not None:
            candidates.append(self.heartbeat.timeout / 8)
        if self.boot_timeout is not None:
            candidates.append(self.boot_timeout / 8)
        return max(0.02, min(candidates))

    def _arm_watchdog(self) -> None:
        if self._watchdog is not None or self.state not in ("running", "stopping"):
            return
        if self.heartbeat is None and self.boot_timeout is None:
            return
        if not self._live:
            return
        self._watchdog = self._call_later(self._watch_interval(), self._watch)

    def _watch(self) -> None:
        self._watchdog = None
        now = time.monotonic()
        for sw in list(self._live.values()):
            if sw.kill_reason is not None or not sw.alive:
                continue
            if sw.ready_at is None:
                if self.boot_timeout is not None and now - sw.spawned_at > self.boot_timeout:
                    sw.kill_reason = "boot_timeout"
                    log.warning(
                        "worker %d (pid %d) not ready after %.1fs: killing it",
                        sw.id,
                        sw.pid,
                        now - sw.spawned_at,
                    )
                    sw.worker.kill("SIGKILL")
            elif self.heartbeat is not None and not sw.retiring and sw.last_beat is not None:
                silent = now - sw.last_beat
                if silent > self.heartbeat.timeout:
                    sw.kill_reason = "hang"
                    log.warning(
                        "worker %d (pid %d) sent no heartbeat for %.2fs (timeout %gs): killing it",
                        sw.id,
                        sw.pid,
                        silent,
                        self.heartbeat.timeout,
                    )
                    self.emit("hang_detected", sw, silent)
                    sw.worker.kill("SIGKILL")
        self._arm_watchdog()

    # --- rolling restart and shutdown ------------------------------------------------------

    async def _roll(self) -> bool:
        count = 0
        for slot in sorted(self._slots):
            old = self._slots.get(slot)
            if self.state != "running":
                return False
            if old is None or not old.alive:
                continue
            new = self._spawn(slot, predecessor=old)
            if not await self._wait_ready(new):
                log.warning(
                    "rolling restart stopped: the replacement for slot %d did not boot", slot
                )
                if new.alive:
                    new.kill_reason = "boot_timeout"
                    new.worker.kill("SIGKILL")
                return False
            new.predecessor = None
            await self._retire(old, self.grace)
            count += 1
        self.emit("rolled", count)
        return True

    async def _wait_ready(self, sw: SupervisedWorker) -> bool:
        if sw.ready_at is not None:
            return True
        if not sw.alive:
            return False
        loop = self._bind_running_loop(required=True)
        fut: asyncio.Future[bool] = loop.create_future()
        sw._waiters.append(fut)
        try:
            return await asyncio.wait_for(fut, self.boot_timeout)
        except TimeoutError:
            return False

    async def _retire(self, sw: SupervisedWorker, grace: float) -> None:
        """Disconnect `sw` (graceful) and wait for its exit, SIGKILLing it after `grace` s."""
        self._ask_to_leave(sw, grace)
        if sw.alive:
            loop = self._bind_running_loop(required=True)
            fut: asyncio.Future[bool] = loop.create_future()
            sw._waiters.append(fut)
            await fut

    def _ask_to_leave(self, sw: SupervisedWorker, grace: float) -> None:
        sw.retiring = True
        if not sw.alive:
            return
        sw.worker.disconnect()

        def kill_if_alive() -> None:
            if sw.alive:
                log.warning(
                    "worker %d (pid %d) still there %.1fs after disconnect: SIGKILL",
                    sw.id,
                    sw.pid,
                    grace,
                )
                sw.kill_reason = "grace"
                sw.worker.kill("SIGKILL")

        self._call_later(grace, kill_if_alive)

    def _begin_stop(self, grace: float, status: int) -> None:
        if self.state in ("stopping", "stopped"):
            return
        if self.state == "new":
            self.state = "stopped"
            self._finish(status)
            return
        self.state = "stopping"
        self.status = status
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        for sw in list(self._live.values()):
            self._ask_to_leave(sw, grace)
        self._check_done()

    def _check_done(self) -> None:
        if self.state == "stopped" or self._live or self._timers:
            return
        if self.state == "running" and any(sw is not None for sw in self._slots.values()):
            return
        status = self.status if self.status is not None else (1 if self.gave_up else 0)
        self.state = "stopped"
        self._finish(status)

    def _finish(self, status: int) -> None:
        self.status = status
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        log.info("supervisor stopped (status %d, stats %s)", status, self.stats)
        if self._holding_loop:
            self._holding_loop = False
            cluster.unref()
        if self._done is not None and not self._done.done():
            self._done.set_result(status)
        self.emit("stopped", status)
