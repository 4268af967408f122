"""Respawn on exit: replace any worker that dies unexpectedly (Node's classic pattern).

Worker 1 crashes after a moment; the primary sees `'exit'` with `exited_after_disconnect`
False and forks a replacement. After RUN_FOR seconds everything is disconnected cleanly.
The primary is written as asyncio code: cluster events arrive on its running loop.
"""

import asyncio
import os
import sys
import time

from clusterlab import cluster

RUN_FOR = float(os.environ.get("RUN_FOR", "3"))


async def primary() -> None:
    stopping = False

    def on_exit(worker, code, signal):
        print(f"worker {worker.id} exited (code={code}, signal={signal})", flush=True)
        if not worker.exited_after_disconnect and not stopping:
            replacement = cluster.fork(env={"CRASH": "0"})
            print(f"forked worker {replacement.id} to replace worker {worker.id}", flush=True)

    cluster.on("exit", on_exit)
    cluster.on("online", lambda worker: print(f"worker {worker.id} is online", flush=True))
    cluster.fork(env={"CRASH": "1"})
    cluster.fork(env={"CRASH": "0"})
    await asyncio.sleep(RUN_FOR)
    stopping = True
    done = asyncio.Event()
    cluster.disconnect(done.set)
    await done.wait()
    print("all workers disconnected", flush=True)


if cluster.is_primary:
    asyncio.run(primary())
elif os.environ.get("CRASH") == "1":
    time.sleep(0.5)
    print(f"worker {cluster.worker.id} crashing", flush=True)
    sys.exit(3)
