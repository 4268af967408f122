"""Supervision on top of `clusterlab.cluster`: keep N workers alive, and know why they die.

Node leaves respawning to the application, and the Python peers do it badly (gunicorn and
uvicorn respawn at once, for ever; uvicorn's ping is answered by a free-running thread, so a
stuck event loop looks healthy). This package is the missing piece, built only on the public
`cluster` API (fork, worker events, messages, `kill`, `disconnect`, `ref`/`unref`):

* restart policies: never, immediate, or exponential backoff with *full jitter*
  (``uniform(0, min(cap, base * factor**attempt))``, so a fleet of crashing workers does not
  restart in lock-step); the attempt count of a slot resets once its worker stayed up
  `reset_after` seconds;
* restart intensity as in Erlang/OTP: more than `max_restarts` restarts within `within` seconds
  and the supervisor stops restarting, emits `'restart_limit'` and logs one line; the primary
  then sleeps on its loop (it never spins);
* boot failures (exit before the worker is ready) are counted apart from crashes after boot;
* heartbeat hang detection: a worker calls `heartbeat()` from the thread that would be stuck
  (its serving loop), and a worker silent for longer than the timeout is SIGKILLed (this works
  for SIGSTOPped processes too) and replaced;
* rolling restart (each replacement ready before its predecessor is told to disconnect) and
  graceful shutdown (disconnect, then SIGKILL after the grace period).

Primary::

    from clusterlab.supervisor import Supervisor, RestartPolicy, HeartbeatPolicy
    sup = Supervisor(workers=4, restart=RestartPolicy.backoff(base=0.1, cap=5),
                     heartbeat=HeartbeatPolicy(interval=0.5, timeout=3))
    sup.on("restart_limit", lambda limit: ...)
    sys.exit(sup.run())            # or, in asyncio code: status = await sup.serve()

Worker::

    server = ThreadingHTTPServer(("", 8000), Handler)
    supervisor.heartbeat(server)   # beats from serve_forever's own loop (service_actions)
    server.serve_forever(poll_interval=0.2)

Everything on the primary side runs on the cluster's loop (the running asyncio loop when the
supervisor is started from asyncio code, otherwise the cluster's own loop, kept running by
`cluster.ref()` while a restart waits), one callback at a time, as the cluster's own listeners
do. Modules: `_policy` (restart and heartbeat policies), `_supervisor` (the primary side),
`_worker` (the worker side: heartbeats, `ready()`, the control messages).
"""

from ._policy import HeartbeatPolicy, RestartPolicy
from ._supervisor import ExitKind, RestartLimit, SupervisedWorker, Supervisor
from ._worker import (
    CONTROL_KEY,
    ENV_HEARTBEAT,
    ENV_SLOT,
    Heartbeat,
    heartbeat,
    is_control_message,
    ready,
)

__all__ = [
    "CONTROL_KEY",
    "ENV_HEARTBEAT",
    "ENV_SLOT",
    "ExitKind",
    "Heartbeat",
    "HeartbeatPolicy",
    "RestartLimit",
    "RestartPolicy",
    "Supervisor",
    "SupervisedWorker",
    "heartbeat",
    "is_control_message",
    "ready",
]
