"""clusterlab's IPC between the primary and one worker, the same phases as `node/ipc.js`.

    python bench/ipc.py [seconds]      # prints one JSON line: roundtrips_per_s,
                                       # w2p_msgs_per_s, p2w_msgs_per_s

From Python (``bench.suite``): ``bench.ipc.measure(seconds)`` runs the script in a fresh
interpreter (it is its own primary) and returns that line as a dict.

Round trips: the primary sends, the worker echoes, the next goes on the reply. One-way: the
sender floods small objects while respecting back-pressure (the worker's `send` blocks when the
channel is full; the primary waits for the write callback of every 1,024th message); the rate is
counted at the receiver, as ipc.js does.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from clusterlab import cluster

BATCH = 1024


def measure(
    seconds: float = 3.0, timeout: float | None = None, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run this benchmark as its own primary (``python bench/ipc.py seconds``); its JSON figures."""
    from bench.peers import run_json

    argv = [sys.executable, str(Path(__file__).resolve()), f"{seconds:g}"]
    return run_json(argv, timeout or seconds * 4 + 30, env)


async def primary(seconds: float) -> None:
    worker = cluster.fork()
    inbox: asyncio.Queue[Any] = asyncio.Queue()
    state: dict[str, Any] = {"phase": None, "count": 0, "t0": 0.0}
    online = asyncio.Event()
    worker.on("online", online.set)
    done_rt = asyncio.Event()
    done_w2p = asyncio.Event()

    def on_message(message: Any, handle: Any) -> None:
        phase = state["phase"]
        if phase == "roundtrip":
            state["count"] += 1
            if time.perf_counter() - state["t0"] < seconds:
                worker.send({"t": "ping", "seq": state["count"], "v": "x"})
            else:
                done_rt.set()
        elif phase == "w2p":
            if message["t"] == "m":
                if state["count"] == 0:
                    state["t0"] = time.perf_counter()
                state["count"] += 1
                if time.perf_counter() - state["t0"] >= seconds and "w2p" not in state:
                    state["w2p"] = state["count"] / (time.perf_counter() - state["t0"])
                    worker.send({"t": "stop"})
            elif message["t"] == "stopped":
                done_w2p.set()
        else:
            inbox.put_nowait(message)

    worker.on("message", on_message)
    await online.wait()
    out: dict[str, Any] = {"clusterlab": True, "python": sys.version.split()[0], "seconds": seconds}

    state.update(phase="roundtrip", count=0, t0=time.perf_counter())
    worker.send({"t": "ping", "seq": 0, "v": "x"})
    await done_rt.wait()
    out["roundtrips_per_s"] = state["count"] / (time.perf_counter() - state["t0"])

    state.update(phase="w2p", count=0)
    worker.send({"t": "flood"})
    await done_w2p.wait()
    out["w2p_msgs_per_s"] = state["w2p"]

    state["phase"] = "p2w"
    worker.send({"t": "count"})
    await flood_worker(worker, seconds)
    worker.send({"t": "report"})
    report = await inbox.get()
    out["p2w_msgs_per_s"] = report["rate"]
    print(json.dumps(out), flush=True)
    gone = asyncio.Event()
    cluster.disconnect(gone.set)
    await gone.wait()


async def flood_worker(worker: cluster.Worker, seconds: float) -> None:
    """Send small messages to ``worker`` for ``seconds``, respecting back-pressure: after every
    :data:`BATCH` messages, wait for the write callback of the last one."""
    loop = asyncio.get_running_loop()
    stop_at = time.perf_counter() + seconds
    seq = 0
    while time.perf_counter() < stop_at:
        written = loop.create_future()
        for _ in range(BATCH - 1):
            worker.send({"t": "m", "seq": seq, "v": "x"})
            seq += 1
        worker.send(
            {"t": "m", "seq": seq, "v": "x"},
            callback=lambda err, f=written: f.done() or f.set_result(err),
        )
        seq += 1
        await written


def child() -> None:
    stop = threading.Event()
    counter = {"count": 0, "t0": 0.0}

    def flood() -> None:
        seq = 0
        while not stop.is_set():
            cluster.worker.send({"t": "m", "seq": seq, "v": "x"})
            seq += 1
        cluster.worker.send({"t": "stopped"})

    def on_message(message: Any, handle: Any) -> None:
        kind = message["t"]
        if kind == "ping":
            cluster.worker.send(message)
        elif kind == "flood":
            threading.Thread(target=flood, daemon=True).start()
        elif kind == "stop":
            stop.set()
        elif kind == "count":
            counter.update(count=0, t0=0.0)
        elif kind == "m":
            if counter["count"] == 0:
                counter["t0"] = time.perf_counter()
            counter["count"] += 1
        elif kind == "report":
            rate = counter["count"] / (time.perf_counter() - counter["t0"])
            cluster.worker.send({"t": "report", "rate": rate})

    cluster.worker.on("message", on_message)


if __name__ == "__main__":  # also in the workers: they run this script as __main__
    if cluster.is_primary:
        asyncio.run(primary(float(sys.argv[1]) if len(sys.argv) > 1 else 3.0))
    else:
        child()
