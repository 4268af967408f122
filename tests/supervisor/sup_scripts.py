"""The primary/worker script the supervisor tests run (after conftest's PRELUDE).

The primary is asyncio code by default (`await sup.serve()`), or a plain script
(`sys.exit(sup.run())`, or `sup.start()` and the main script ends). Every supervisor event is
printed as one JSON record with the primary's monotonic time `t` and CPU time `cpu`. Signals
to the primary: SIGHUP → rolling restart, SIGUSR1 → graceful stop (grace from STOP_GRACE), SIGUSR2
→ a "probe" record (time, CPU time, loop turns so far). RECORD_BEATS=1: a "beat" record per
heartbeat received.

Workers pick their behaviour from MODE (set per slot through the supervisor's `env`):
serve (threaded HTTP server answering its pid), single (single-threaded HTTP server; GET /spin
never returns), asyncio (asyncio server; a /spin request blocks the loop), boot_fail (exit 3
before listening), crash (exit 5 CRASH_DELAY s after listening), stubborn (ignores disconnect).
"""

from __future__ import annotations

from conftest import SUPERVISOR_RECORD

COMMON = """
import asyncio, dataclasses, signal
from http.server import BaseHTTPRequestHandler
from clusterlab.supervisor import (HeartbeatPolicy, RestartPolicy, Supervisor, heartbeat,
                                   is_control_message)
from clusterlab.servers import HTTPServer, ThreadingHTTPServer, start_server


{SUPERVISOR_RECORD}

class PidHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self):
        if self.path == "/spin":
            while True:
                pass
        body = f"{os.getpid()}\\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


async def asyncio_worker(port):
    async def handle(reader, writer):
        line = await reader.readline()
        if b"/spin" in line:
            while True:  # blocks the loop: heartbeats stop
                pass
        body = f"{os.getpid()}\\n".encode()
        writer.write(b"HTTP/1.0 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    server = await start_server(handle, "127.0.0.1", port)
    heartbeat()  # on the running loop
    await server.serve_forever()


def worker_main():
    mode = os.environ.get("MODE", "serve")
    if mode == "boot_fail":
        sys.exit(3)
    port = int(os.environ["PORT"])
    if mode == "asyncio":
        asyncio.run(asyncio_worker(port))
        return
    cls = HTTPServer if mode == "single" else ThreadingHTTPServer
    try:
        server = cls(("127.0.0.1", port), PidHandler)
        heartbeat(server)
        if mode == "crash":
            threading.Timer(float(os.environ.get("CRASH_DELAY", "0.1")), os._exit, (5,)).start()
        server.serve_forever(poll_interval=0.05)
    finally:
        # Ignores the disconnect, whenever it lands (even while the server is still being
        # built, when it is closed from the start): its main code never returns.
        while mode == "stubborn":
            time.sleep(0.1)


def install(sup):
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, sup.rolling_restart)
    grace = float(os.environ.get("STOP_GRACE", "5"))
    loop.add_signal_handler(signal.SIGUSR1, lambda: sup.stop(grace))
    loop.add_signal_handler(signal.SIGUSR2, lambda: out("probe", **now()))


def record_beats():
    # a "beat" record for every heartbeat the primary receives (env RECORD_BEATS=1)
    from clusterlab.supervisor import CONTROL_KEY

    def on_message(w, m, h):
        if m == {CONTROL_KEY: "heartbeat"}:
            out("beat", id=w.id, **now())

    cluster.on("message", on_message)


async def amain(sup):
    record(sup)
    if os.environ.get("RECORD_BEATS"):
        record_beats()
    install(sup)
    status = await sup.serve()
    out("status", status=status)
    return status
"""
COMMON = COMMON.replace("{SUPERVISOR_RECORD}", SUPERVISOR_RECORD)


def script(config: str, style: str = "asyncio") -> str:
    """A primary script: `config` is the Supervisor(...) argument list, as source text."""
    if style == "asyncio":
        main = "sys.exit(asyncio.run(amain(Supervisor({config}))))"
    elif style == "run":
        main = (
            "sup = Supervisor({config})\nrecord(sup)\nstatus = sup.run()\n"
            "out('status', status=status)\nsys.exit(status)"
        )
    elif style == "start":
        main = "sup = Supervisor({config})\nrecord(sup)\nsup.start()\nout('started')"
    else:
        raise ValueError(style)
    body = (
        "if cluster.is_primary:\n"
        + "\n".join("    " + line for line in main.format(config=config).splitlines())
        + "\nelse:\n    worker_main()\n"
    )
    return COMMON + "\n" + body
