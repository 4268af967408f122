"""A supervised cluster: N HTTP workers kept alive, with backoff, a restart limit and heartbeats.

    .venv/bin/python examples/supervised.py          # then: curl localhost:8000
    kill -HUP <primary pid>                           # rolling restart, no request refused
    Ctrl-C                                            # graceful stop (grace 5 s, then SIGKILL)

GET /crash makes the answering worker exit 1 (it is restarted after a jittered backoff);
GET /hang blocks it for ever (its heartbeat stops; it is killed and replaced within 2 s).
Five restarts within 30 s and the supervisor gives up, says so on stderr and exits 1.
RUN_FOR=<seconds> stops it by itself after that long (used by the tests); PORT picks the port.
"""

import asyncio
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler

from clusterlab import available_parallelism, cluster
from clusterlab.servers import ThreadingHTTPServer
from clusterlab.supervisor import HeartbeatPolicy, RestartPolicy, Supervisor, heartbeat

PORT = int(os.environ.get("PORT", "8000"))
RUN_FOR = float(os.environ.get("RUN_FOR", "0"))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        if self.path == "/crash":
            os._exit(1)
        if self.path == "/hang":
            os.kill(os.getpid(), signal.SIGSTOP)  # the whole worker stops, heartbeat included
        body = f"hello from worker {cluster.worker.id} (pid {os.getpid()})\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


async def primary() -> int:
    sup = Supervisor(
        workers=max(2, available_parallelism()),
        restart=RestartPolicy.backoff(base=0.1, factor=2, cap=5, max_restarts=5, within=30),
        heartbeat=HeartbeatPolicy(interval=0.5, timeout=2),
        grace=5,
    )
    sup.on(
        "ready",
        lambda sw, boot: print(f"worker {sw.id} ready in slot {sw.slot} ({boot:.2f}s)", flush=True),
    )
    sup.on(
        "exit",
        lambda sw, kind, code, sig: print(
            f"worker {sw.id} exited: {kind} (code={code}, signal={sig})", flush=True
        ),
    )
    sup.on(
        "restart_scheduled",
        lambda slot, delay, attempt, kind: print(
            f"slot {slot}: restart in {delay:.2f}s", flush=True
        ),
    )
    sup.on(
        "hang_detected",
        lambda sw, silent: print(f"worker {sw.id} silent for {silent:.1f}s: killed", flush=True),
    )
    sup.on("rolled", lambda n: print(f"rolling restart done: {n} workers replaced", flush=True))
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, sup.rolling_restart)
    sup.start()
    print(f"primary {os.getpid()} supervising on port {PORT}", flush=True)
    if RUN_FOR:
        loop.call_later(RUN_FOR, sup.stop)
    status = await sup.serve()
    print(f"stopped with status {status}; {sup.stats}", flush=True)
    return status


if cluster.is_primary:
    sys.exit(asyncio.run(primary()))
else:
    server = ThreadingHTTPServer(("", PORT), Handler)
    heartbeat(server)  # beats from serve_forever's loop, not from a thread of its own
    server.serve_forever(poll_interval=0.25)
