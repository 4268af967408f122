"""clusterlab worker start-up latency, the same measurements as `node/respawn.js`.

    python bench/respawn.py [n]        # one JSON line: medians (ms) and every sample

fork: `cluster.fork()` → `'online'` and → `'listening'` (the worker listens on a shared port with
`cluster.listen`, the minimal server start). kill: SIGKILL of a listening worker → replacement
`'listening'` (forked on `'exit'`). Sequential, median of n (default 20). Workers are started
with the cluster's start method: plain exec of the interpreter by default, or what
``CLUSTERLAB_START_METHOD`` names (e.g. ``forkserver``, a pre-started template process); the JSON
line says which (``start_method``).

From Python (``bench.suite``): ``bench.respawn.measure(n, start_method=None)`` runs the script in
a fresh interpreter and returns that line as a dict.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from clusterlab import cluster


def measure(
    n: int = 20,
    start_method: str | None = None,
    timeout: float = 150,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run this benchmark as its own primary (``python bench/respawn.py n``), with
    ``CLUSTERLAB_START_METHOD=start_method`` when given; its JSON figures."""
    from bench.peers import run_json

    extra = {**(env or {}), **({"CLUSTERLAB_START_METHOD": start_method} if start_method else {})}
    return run_json([sys.executable, str(Path(__file__).resolve()), str(n)], timeout, extra)


async def fork_one(record: dict[str, list[float]] | None) -> object:
    loop = asyncio.get_running_loop()
    listening = loop.create_future()
    t0 = time.perf_counter()
    worker = cluster.fork()
    if record is not None:
        worker.once("online", lambda: record["online"].append((time.perf_counter() - t0) * 1e3))
    worker.once(
        "listening",
        lambda address: listening.done() or listening.set_result(time.perf_counter() - t0),
    )
    elapsed = await listening
    if record is not None:
        record["listening"].append(elapsed * 1e3)
    return worker


async def exited(worker: object) -> None:
    done = asyncio.get_running_loop().create_future()
    worker.once("exit", lambda code, signal: done.done() or done.set_result(None))  # type: ignore[attr-defined]
    await done


async def primary(n: int) -> None:
    samples: dict[str, list[float]] = {"online": [], "listening": [], "kill": []}
    for _ in range(n):
        worker = await fork_one(samples)
        worker.kill("SIGTERM")  # type: ignore[attr-defined]
        await exited(worker)
    worker = await fork_one(None)
    for _ in range(n):
        t0 = time.perf_counter()
        worker.kill("SIGKILL")  # type: ignore[attr-defined]
        await exited(worker)
        worker = await fork_one(None)
        samples["kill"].append((time.perf_counter() - t0) * 1e3)
    worker.kill("SIGTERM")  # type: ignore[attr-defined]
    await exited(worker)
    print(
        json.dumps(
            {
                "clusterlab": True,
                "n": n,
                "start_method": cluster.settings.get("start_method", "exec"),
                "fork_online_ms": statistics.median(samples["online"]),
                "fork_listening_ms": statistics.median(samples["listening"]),
                "kill_listening_ms": statistics.median(samples["kill"]),
                "samples": {k: [round(v, 2) for v in vs] for k, vs in samples.items()},
            }
        ),
        flush=True,
    )


if __name__ == "__main__":  # also in the workers: they run this script as __main__
    if cluster.is_primary:
        asyncio.run(primary(int(sys.argv[1]) if len(sys.argv) > 1 else 20))
    else:
        sock = cluster.listen(port=0, host="127.0.0.1")
