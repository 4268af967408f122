"""Messages both ways: workers report, the primary answers and tallies.

Each worker asks the primary for work, receives a number, squares it and sends the result back;
the primary disconnects everyone once all results are in.
"""

import os

from clusterlab import cluster

WORKERS = 3

if cluster.is_primary:
    results = {}

    def on_message(worker, message, handle):
        if message["type"] == "ready":
            worker.send({"type": "job", "n": worker.id * 10})
        elif message["type"] == "result":
            results[worker.id] = message["square"]
            print(
                f"worker {worker.id} (pid {worker.process.pid}) says {message['n']}² = {message['square']}"
            )
            if len(results) == WORKERS:
                cluster.disconnect(lambda: print(f"all done: {sorted(results.items())}"))

    cluster.on("message", on_message)
    for _ in range(WORKERS):
        cluster.fork()
else:

    def on_job(message, handle):
        if message["type"] == "job":
            n = message["n"]
            cluster.worker.send({"type": "result", "n": n, "square": n * n, "pid": os.getpid()})

    cluster.worker.on("message", on_job)
    cluster.worker.send({"type": "ready"})
